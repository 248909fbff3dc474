"""PostgresStore reuses its connections within a process (issue 16): a cycle made ~74 store
calls, each on a new connection, and opening them was the largest item of the project's own
CPU (16 % of a cycle's samples) plus a PostgreSQL backend forked for each. Real PostgreSQL."""

import os

import psycopg
import pytest

pytestmark = pytest.mark.db

from recon_assets.resources.database import PostgresStore, idle_connections


def _backend_pid(store: PostgresStore) -> int:
    with store.connect() as conn:
        return conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]


def test_consecutive_store_calls_share_one_connection(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    first = _backend_pid(store)
    assert _backend_pid(store) == first
    assert store.call("recon_snapshot_account", {"p_account": "nobody"}) is not None
    assert _backend_pid(store) == first


def test_a_connection_killed_on_the_server_is_replaced_before_use(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    first = _backend_pid(store)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
    # The idle connection is dead; the next call gets a live one instead of an error.
    second = _backend_pid(store)
    assert second != first


def test_a_failed_transaction_is_rolled_back_before_the_connection_is_reused(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    with store.connect() as conn:
        conn.execute("CREATE TABLE public.reuse_probe (v int)")
    with pytest.raises(psycopg.errors.DivisionByZero):
        with store.connect() as conn:
            conn.execute("INSERT INTO public.reuse_probe VALUES (1)")
            conn.execute("SELECT 1 / 0")
    with store.connect() as conn:  # not "current transaction is aborted"
        assert conn.execute("SELECT count(*) AS n FROM public.reuse_probe").fetchone()["n"] == 0
        conn.execute("INSERT INTO public.reuse_probe VALUES (2)")
    with psycopg.connect(pg_dsn) as other:  # committed on the way back to the idle list
        assert other.execute("SELECT count(*) FROM public.reuse_probe").fetchone()[0] == 1


def test_autocommit_of_one_caller_does_not_leak_to_the_next(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    with store.connect(autocommit=True) as conn:
        assert conn.autocommit
    with store.connect() as conn:
        assert not conn.autocommit


def test_stores_with_other_timeouts_do_not_share_connections(pg_dsn):
    fast = PostgresStore(dsn=pg_dsn, statement_timeout_ms=1_000)
    slow = PostgresStore(dsn=pg_dsn, statement_timeout_ms=60_000)
    with fast.connect() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "1s"
    with slow.connect() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "1min"


def test_a_forked_child_never_uses_its_parents_connections(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    parent = _backend_pid(store)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write, str(_backend_pid(store)).encode())
        finally:
            os._exit(0)
    os.close(write)
    got = int(os.read(read, 64).decode())
    os.waitpid(child, 0)
    assert got != parent
    assert _backend_pid(store) == parent  # the parent's connection survived the child


def test_the_idle_list_is_bounded_across_databases(pg_server):
    names = [f"reuse_bound_{i}" for i in range(12)]
    try:
        for name in names:
            _backend_pid(PostgresStore(dsn=pg_server.create_database(name)))
        assert idle_connections() <= 8
    finally:
        for name in names:
            pg_server.drop_database(name)
