"""Issue 38: a database URL to another host without `sslmode=require` (or stronger) is refused
with a clear error that names the host, never the password; loopback and Unix sockets need none."""

import pytest

from recon_assets.resources.database import (InsecureDatabaseUrl, open_connection,
                                             require_tls_off_loopback)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dsn", [
    "postgresql://recon:pw-9d1@db.example.com:5432/trading",
    "postgresql://recon:pw-9d1@db.example.com:5432/trading?sslmode=prefer",
    "postgresql://recon:pw-9d1@10.1.2.3/trading?sslmode=disable",
    "host=db.example.com user=recon password=pw-9d1 dbname=trading",
    "postgresql://recon:pw-9d1@127.0.0.1,db.example.com/trading",
])
def test_another_host_without_tls_is_refused_before_connecting(dsn, monkeypatch):
    monkeypatch.delenv("PGSSLMODE", raising=False)
    with pytest.raises(InsecureDatabaseUrl, match="sslmode=require") as refused:
        open_connection(dsn, connect_timeout=1)
    message = str(refused.value)
    assert "pw-9d1" not in message
    if dsn.startswith("postgresql://"):  # a URL: its host:port/db is named
        assert "db.example.com" in message or "10.1.2.3" in message or "127.0.0.1" in message


@pytest.mark.parametrize("dsn", [
    "postgresql://recon:pw@db.example.com/trading?sslmode=require",
    "postgresql://recon:pw@db.example.com/trading?sslmode=verify-full",
    "postgresql://recon:pw@127.0.0.1:5432/trading",
    "postgresql://recon:pw@localhost/trading",
    "postgresql://recon:pw@[::1]/trading",
    "host=/var/run/postgresql dbname=trading",
    "dbname=trading",
])
def test_tls_or_this_machine_is_accepted(dsn, monkeypatch):
    monkeypatch.delenv("PGSSLMODE", raising=False)
    require_tls_off_loopback(dsn)


def test_pgsslmode_counts_like_libpq_reads_it(monkeypatch):
    monkeypatch.setenv("PGSSLMODE", "require")
    require_tls_off_loopback("postgresql://recon:pw@db.example.com/trading")
