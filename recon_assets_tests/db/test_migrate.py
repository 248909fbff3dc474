"""Migrations apply to a real PostgreSQL, twice without error, and the money constraints hold."""

import psycopg
import pytest

from recon_assets.cli import main as recon_cli
from recon_assets.db.migrate import available_migrations, migrate

pytestmark = pytest.mark.db


def test_migrate_applies_everything_then_is_a_no_op(empty_pg_dsn, capsys):
    assert recon_cli(["migrate", "--dsn", empty_pg_dsn]) == 0
    versions_on_disk = [m.version for m in available_migrations()]
    assert versions_on_disk[:3] == ["0001", "0002", "0003"]
    assert f"applied migrations {', '.join(versions_on_disk)}" in capsys.readouterr().out
    assert recon_cli(["migrate", "--dsn", empty_pg_dsn]) == 0
    assert "up to date" in capsys.readouterr().out
    with psycopg.connect(empty_pg_dsn) as conn:
        versions = [r[0] for r in conn.execute(
            "SELECT version FROM recon.schema_migrations WHERE kind = 'versioned' ORDER BY version")]
        tables = {r[0] for r in conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema IN ('public', 'recon')")}
    assert versions == [m.version for m in available_migrations()]
    for table in ("public.profiles", "public.orders", "public.positions", "public.trade_history",
                  "public.applied_fills", "public.capital_ledger", "recon.cycles",
                  "recon.mismatches", "recon.parity_confirmations", "recon.quarantine",
                  "recon.backfill_decisions", "recon.corrections", "recon.watchdog_state"):
        assert table in tables


def test_edited_migration_is_refused(empty_pg_dsn):
    migrate(empty_pg_dsn)
    with psycopg.connect(empty_pg_dsn) as conn:
        conn.execute("UPDATE recon.schema_migrations SET checksum = 'x' WHERE version = '0001'")
    from recon_assets.db.migrate import MigrationError
    with pytest.raises(MigrationError, match="0001_trading_tables was changed"):
        migrate(empty_pg_dsn)


def test_migrate_without_dsn_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("RECON_DATABASE_URL", raising=False)
    assert recon_cli(["migrate"]) == 2
    assert "RECON_DATABASE_URL" in capsys.readouterr().err


def test_unreachable_database_error_hides_the_password(capsys):
    with pytest.raises(ConnectionError) as err:
        migrate("postgresql://bob:s3cret@127.0.0.1:1/nowhere?connect_timeout=1")
    assert str(err.value) == ("cannot connect to the database at 127.0.0.1:1/nowhere: "
                              "connection refused")


@pytest.fixture
def conn(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd) "
                     "VALUES ('alpha', 'acct1', 'ALP', 10000)")
        yield conn


def _order(conn, client_order_id, qty=1, filled=0):
    conn.execute(
        "INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id, status, "
        "qty, filled_qty) VALUES ('alpha', 't1', 'ENTRY', 'BTC/USDT:USDT', 'buy', %s, 'open', %s, %s)",
        (client_order_id, qty, filled))


def test_duplicate_client_order_id_is_rejected(conn):
    _order(conn, "ALP-t1-E")
    with pytest.raises(psycopg.errors.UniqueViolation):
        _order(conn, "ALP-t1-E")


@pytest.mark.parametrize("qty,filled", [(-1, 0), (0, 0), (1, -0.5), (1, 2)])
def test_bad_order_quantities_are_rejected(conn, qty, filled):
    with pytest.raises(psycopg.errors.CheckViolation):
        _order(conn, "ALP-t1-X", qty, filled)


def _slice(conn, entry, exit_):
    conn.execute("INSERT INTO trade_history (trade_id, profile_id, symbol, side, entry_qty, exit_qty) "
                 "VALUES ('t1', 'alpha', 'BTC/USDT:USDT', 'long', %s, %s)", (entry, exit_))


def test_exit_qty_above_entry_qty_is_rejected(conn):
    with pytest.raises(psycopg.errors.CheckViolation):
        _slice(conn, 1, 1.5)


def test_negative_slice_qty_is_rejected(conn):
    with pytest.raises(psycopg.errors.CheckViolation):
        _slice(conn, -1, 0)


def test_virtual_open_qty_is_entry_minus_exit(conn):
    _slice(conn, 2, 0.5)
    (voq,) = conn.execute("SELECT virtual_open_qty FROM trade_history").fetchone()
    assert float(voq) == 1.5


def test_exit_qty_cannot_be_raised_above_entry_later(conn):
    _slice(conn, 1, 0)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE trade_history SET exit_qty = 1.01")


def test_duplicate_exchange_fill_is_rejected(conn):
    sql = ("INSERT INTO applied_fills (exchange_account, symbol, exchange_fill_id, profile_id, side, "
           "qty, price, filled_at) VALUES ('acct1', 'BTC/USDT:USDT', '42', 'alpha', 'buy', 1, 100, now())")
    conn.execute(sql)
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(sql)


def test_negative_position_and_capital_are_rejected(conn):
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO positions (profile_id, symbol, side, qty) "
                     "VALUES ('alpha', 'BTC/USDT:USDT', 'long', -1)")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO capital_ledger (profile_id, trade_id, reserved_usd) "
                     "VALUES ('alpha', 't1', -5)")


def test_mismatch_history_is_append_only(conn):
    conn.execute("INSERT INTO recon.mismatches (cycle_id, kind, exchange_account) "
                 "VALUES ('run1', 'missing_in_db', 'acct1')")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("DELETE FROM recon.mismatches")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("UPDATE recon.mismatches SET kind = 'qty_drift'")


def test_correction_idempotency_key_is_unique(conn):
    sql = ("INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler) "
           "VALUES ('alpha:t1:f42:reconcile_entry_fill', 'run1', 'alpha', 'reconcile_entry_fill')")
    conn.execute(sql)
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(sql)
