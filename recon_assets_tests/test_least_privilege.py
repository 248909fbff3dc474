"""Least privilege (issue 18): the reconciler runs under a role given only
`recon_assets.db.reconciler_role`'s grants (EXECUTE on the public.recon_* functions it calls,
SELECT on the four trading tables recon_snapshot_account reads, USAGE on schemas public and
recon, EXECUTE on recon.open_order_statuses()), and that role cannot write any table except
through the handlers.

Each test creates its own LOGIN role (role names are cluster-wide: a unique name per test) and
drops it at the end."""

import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import errors, sql

from recon_assets.core.rules import WATCHDOG_PAUSE_SOURCE
from recon_assets.db.reconciler_role import (FUNCTIONS, SNAPSHOT_HELPERS, SNAPSHOT_TABLES,
                                             grant_reconciler, grant_script)
from recon_assets.demo import DemoStack, local_resources, run_once
from recon_assets.metrics.health import load_state
from recon_assets.resources.database import PostgresStore
from recon_assets.simulator.server import SimulatorServer
from recon_assets_tests.harness.invariants import assert_invariants

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TRADING_TABLES = ("profiles", "orders", "positions", "trade_history", "applied_fills",
                  "capital_ledger")
# public.recon_* functions the code location never calls: recon_may_trade is the trading app's
# gate (the demo's trading-app stand-in calls it), recon_add_exit_fill_hint is an operator's,
# recon_recalculate_capital is called by the handlers as their owner, recon_profile_lock_key is
# pure (its derivation is also in Python).
NOT_THE_RECONCILERS = {"recon_may_trade", "recon_add_exit_fill_hint",
                       "recon_recalculate_capital", "recon_profile_lock_key"}


def _as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(
        netloc=f"{role}:{password}@{parts.hostname}:{parts.port}"))


@contextmanager
def reconciler_role(pg_server, dsn: str):
    """A fresh LOGIN role with a password and the reconciler's grants on `dsn`'s database;
    yields its DSN; drops the role (and what it owns or was granted) at the end."""
    role, password = f"recon_lp_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
    try:
        grant_reconciler(dsn, role)
        yield role, _as_role(dsn, role, password)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(
                sql.Identifier(role)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _rows(dsn: str, query: str, params=()):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def test_the_docs_show_the_same_grants():
    text = (ROOT / "docs/deployment.md").read_text()
    section = text.split("## The reconciler's database role", 1)[1].split("\n## ", 1)[0]
    missing = [f for f in FUNCTIONS if f"`{f}`" not in section]
    assert not missing, f"not in docs/deployment.md's role section: {missing}"
    select_row = next(line for line in section.splitlines() if line.startswith("| `SELECT` on"))
    assert set(re.findall(r"`public\.(\w+)`", select_row)) == set(SNAPSHOT_TABLES)
    for helper in SNAPSHOT_HELPERS:
        assert f"`EXECUTE` on `{helper}`" in section
    for name in NOT_THE_RECONCILERS:
        assert f"`{name}`" in section.split("Not granted:", 1)[1]
    assert "recon grant-reconciler" in section and "--grant-reconciler" in section


def test_the_granted_functions_are_the_ones_the_code_calls(pg_dsn):
    shipped = {r[0] for r in _rows(pg_dsn, "SELECT proname FROM pg_proc WHERE pronamespace = "
                                           "'public'::regnamespace AND proname LIKE 'recon%%'")}
    code = "\n".join(p.read_text() for p in (ROOT / "recon_assets").rglob("*.py")
                     if p.name != "reconciler_role.py")
    called = {name for name in shipped
              if re.search(rf"""["']{name}["']""", code)} - NOT_THE_RECONCILERS
    assert set(FUNCTIONS) == called
    assert set(FUNCTIONS) <= shipped and len(FUNCTIONS) == len(set(FUNCTIONS))


def test_a_whole_cycle_with_corrections_runs_under_the_reconciler_role(pg_server,
                                                                       template_copies):
    name = template_copies.take()
    dsn = pg_server.dsn(name)
    base = Path(tempfile.mkdtemp(prefix="recon-least-privilege-"))
    sim = SimulatorServer(port=0, scenario="demo")
    sim.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} SET track_functions = 'all'").format(
                sql.Identifier(name)))
        sim.scenario.seed_database(dsn)  # the trading app's rows, as the owner
        before = _rows(dsn, "SELECT count(*) FROM applied_fills")[0][0]
        with reconciler_role(pg_server, dsn) as (role, role_dsn):
            summary = run_once(DemoStack(base, sim=sim), local_resources(role_dsn, sim))
            health = load_state(role_dsn).health
            assert _rows(role_dsn, "SELECT current_user")[0][0] == role
        assert [c["status"] for c in summary["corrections"]].count("applied") >= 1
        applied = _rows(dsn, "SELECT count(*) FROM recon.corrections WHERE outcome = 'applied'")
        assert applied[0][0] >= 1
        assert _rows(dsn, "SELECT count(*) FROM applied_fills")[0][0] > before
        assert health["reconciliationLastRun"] is not None
        # The EXIT backfill booked its GO fill, the parity heartbeat ran, the watchdog paused.
        assert [b["status"] for b in summary["backfills"]].count("applied") >= 1
        assert _rows(dsn, "SELECT count(*) FROM recon.parity_checks")[0][0] >= 1
        assert any(c["watchdog_tripped"] for c in summary["cycles"])
        assert _rows(dsn, "SELECT count(*) FROM profiles WHERE trading_state = 'paused' "
                          "AND pause_source = %s", (WATCHDOG_PAUSE_SOURCE,))[0][0] >= 1
        assert_invariants(dsn, when="after the demo's flow under the reconciler's role")
        # Every public function the flow called (tracked) is one of the grant's.
        called = {r[0] for r in _rows(
            dsn, "SELECT funcname FROM pg_stat_user_functions WHERE schemaname = 'public'")}
        # (A backend flushes its counts at most once a second: check only early calls.)
        assert {"recon_snapshot_account", "recon_record_cycle"} <= called
        assert called - set(FUNCTIONS) <= NOT_THE_RECONCILERS
    finally:
        sim.stop()
        shutil.rmtree(base, ignore_errors=True)
        pg_server.drop_database(name)


def _denied(conn: psycopg.Connection, statement) -> bool:
    try:
        with conn.transaction():
            conn.execute(statement)
    except errors.InsufficientPrivilege:
        return True
    except psycopg.Error:  # it ran (and failed on its arguments): not refused
        return False
    return False


def test_the_role_writes_no_table_and_calls_no_internal_function_but_the_handlers_work(
        pg_server, pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd)"
                     " VALUES ('lp1', 'acct-lp', 'LP1', 1000)")
        tables = conn.execute(
            "SELECT table_schema, table_name, (SELECT column_name FROM information_schema.columns"
            " c WHERE c.table_schema = t.table_schema AND c.table_name = t.table_name"
            " AND c.is_generated = 'NEVER' ORDER BY ordinal_position LIMIT 1)"
            " FROM information_schema.tables t WHERE table_schema IN ('public', 'recon')"
            " AND table_type = 'BASE TABLE' ORDER BY 1, 2").fetchall()
        internal = conn.execute(
            "SELECT p.oid::regprocedure::text, p.pronargs, p.prorettype = 'trigger'::regtype"
            " FROM pg_proc p WHERE p.pronamespace = 'recon'::regnamespace ORDER BY 1").fetchall()
    assert {t for s, t, _ in tables if s == "public"} >= set(TRADING_TABLES)
    assert any(s == "recon" for s, _, _ in tables)
    assert any(name.startswith("recon._") for name, _, _ in internal)

    with reconciler_role(pg_server, pg_dsn) as (role, role_dsn), \
            psycopg.connect(role_dsn, autocommit=True) as conn:
        allowed = []
        for schema, table, column in tables:
            name = sql.Identifier(schema, table)
            col = sql.Identifier(column)
            writes = {
                "INSERT": sql.SQL("INSERT INTO {} DEFAULT VALUES").format(name),
                "UPDATE": sql.SQL("UPDATE {} SET {} = {}").format(name, col, col),
                "DELETE": sql.SQL("DELETE FROM {}").format(name),
                "TRUNCATE": sql.SQL("TRUNCATE {}").format(name),
            }
            if not (schema == "public" and table in SNAPSHOT_TABLES):
                writes["SELECT"] = sql.SQL("SELECT 1 FROM {} LIMIT 1").format(name)
            allowed += [f"{what} {schema}.{table}" for what, statement in writes.items()
                        if not _denied(conn, statement)]
        for name, nargs, is_trigger in internal:
            if name in SNAPSHOT_HELPERS:
                continue
            if is_trigger:  # a trigger function cannot be called at all; check the privilege
                if conn.execute("SELECT has_function_privilege(%s, 'EXECUTE')",
                                (name,)).fetchone()[0]:
                    allowed.append(f"EXECUTE {name}")
                continue
            call = sql.SQL("SELECT {}({})").format(
                sql.SQL(name.split("(")[0]), sql.SQL(", ").join([sql.NULL] * nargs))
            if not _denied(conn, call):
                allowed.append(f"EXECUTE {name}")
        assert not allowed, f"the reconciler's role may: {allowed}"

        # Reading the trading tables directly is what the snapshot needs, and works.
        assert conn.execute("SELECT count(*) FROM public.profiles").fetchone()[0] == 1
        # The handler path changes the trading tables: pause and resume through the functions.
        store = PostgresStore(dsn=role_dsn)
        assert store.snapshot_account("acct-lp")["profiles"][0]["trading_state"] == "active"
        for job in ("pause_profile", "resume_profile"):  # what each operator job records first
            store.call("recon_record_operator_action", {"p_job": job, "p_run_id": f"lp-{job}",
                                                        "p_user": None, "p_config": {}})
        store.call("recon_pause_profile", {"p_profile_id": "lp1", "p_reason": "least privilege",
                                           "p_run_id": "lp-pause_profile"})
        assert _rows(pg_dsn, "SELECT trading_state FROM profiles WHERE id = 'lp1'") == [
            ("paused",)]
        store.call("recon_resume_profile", {"p_profile_id": "lp1", "p_reason": "least privilege",
                                            "p_run_id": "lp-resume_profile"})
        assert _rows(pg_dsn, "SELECT trading_state FROM profiles WHERE id = 'lp1'") == [
            ("active",)]
        # The health server's read works under the role too.
        assert load_state(role_dsn).health["profiles"][0]["profileId"] == "lp1"
        # The role's own privileges are exactly the grant: nothing on the other trading tables.
        for table in TRADING_TABLES:
            expected = table in SNAPSHOT_TABLES
            assert conn.execute("SELECT has_table_privilege(%s, 'SELECT')",
                                (f"public.{table}",)).fetchone()[0] is expected, table
        assert not conn.execute("SELECT has_schema_privilege('public', 'CREATE') OR "
                                "has_schema_privilege('recon', 'CREATE')").fetchone()[0]


def test_the_role_may_execute_and_read_exactly_the_documented_lists(pg_server, pg_dsn):
    """Not "at least": a broader grant (GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public, a
    SELECT on another table) fails here, whatever else it would let the role do."""
    with reconciler_role(pg_server, pg_dsn) as (role, _):
        executable = {r[0] for r in _rows(
            pg_dsn, "SELECT CASE WHEN n.nspname = 'public' THEN p.proname"
                    " ELSE p.oid::regprocedure::text END FROM pg_proc p"
                    " JOIN pg_namespace n ON n.oid = p.pronamespace"
                    " WHERE n.nspname IN ('public', 'recon')"
                    " AND has_function_privilege(%s, p.oid, 'EXECUTE')", (role,))}
        readable = {r[0] for r in _rows(
            pg_dsn, "SELECT n.nspname || '.' || c.relname FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname IN ('public', 'recon')"
                    " AND c.relkind IN ('r', 'v', 'm', 'p', 'f', 'S')"
                    " AND CASE WHEN c.relkind = 'S'"
                    " THEN has_sequence_privilege(%s, c.oid, 'SELECT, USAGE, UPDATE')"
                    " ELSE has_table_privilege(%s, c.oid,"
                    " 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') END",
            (role, role))}
        schemas = {r[0] for r in _rows(
            pg_dsn, "SELECT nspname FROM pg_namespace WHERE nspname IN ('public', 'recon')"
                    " AND has_schema_privilege(%s, oid, 'USAGE')", (role,))}
    # grants.sql leaves one function to PUBLIC on purpose: recon_profile_lock_key, a pure
    # function of a profile id the trading bots call to take the same advisory lock.
    documented = set(FUNCTIONS) | set(SNAPSHOT_HELPERS) | {"recon_profile_lock_key"}
    assert executable == documented, (f"beyond the documented list: "
                                      f"{sorted(executable - documented)}; "
                                      f"missing: {sorted(documented - executable)}")
    assert readable == {f"public.{t}" for t in SNAPSHOT_TABLES}, sorted(readable)
    assert schemas == {"public", "recon"}


def test_the_grant_refuses_a_role_that_does_not_exist(pg_dsn):
    with pytest.raises(psycopg.errors.RaiseException, match="no role named"):
        grant_reconciler(pg_dsn, f"recon_lp_missing_{uuid.uuid4().hex[:8]}")
    assert grant_script("o'brien").count("'o''brien'") == 1


@pytest.mark.parametrize("revoke", [
    "USAGE ON SCHEMA recon", "EXECUTE ON FUNCTION recon.open_order_statuses()",
    *(f"SELECT ON TABLE public.{t}" for t in SNAPSHOT_TABLES)])
def test_each_grant_for_the_snapshot_is_needed(pg_server, pg_dsn, revoke):
    """recon_snapshot_account reads as its caller: without any one of its grants it fails."""
    with reconciler_role(pg_server, pg_dsn) as (role, role_dsn):
        store = PostgresStore(dsn=role_dsn)
        assert store.snapshot_account("acct1")["profiles"] == []
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL(f"REVOKE {revoke} FROM {{}}").format(sql.Identifier(role)))
        with pytest.raises(errors.InsufficientPrivilege):
            store.snapshot_account("acct1")


def test_the_role_sees_the_trading_rows_only_through_its_policy(pg_server, pg_dsn):
    """The trading tables have row-level security (migration 0023): the grant's policy
    (`recon_reads_<role>`) is what lets the snapshot see their rows; without it the role reads
    an empty book, which the cycle would take for a flat account."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd)"
                     " VALUES ('lp-rls', 'acct-rls', 'LPR', 1000)")
    try:
        with reconciler_role(pg_server, pg_dsn) as (role, role_dsn):
            store = PostgresStore(dsn=role_dsn)
            (row,) = store.snapshot_account("acct-rls")["profiles"]
            assert row["profile_id"] == "lp-rls"
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP POLICY {} ON public.profiles").format(
                    sql.Identifier(f"recon_reads_{role}")))
            assert store.snapshot_account("acct-rls")["profiles"] == []
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM profiles WHERE id = 'lp-rls'")


def test_the_command_grants_prints_and_refuses_without_a_database(pg_server, pg_dsn, capsys,
                                                                   monkeypatch):
    from recon_assets.cli import main

    monkeypatch.delenv("RECON_DATABASE_URL", raising=False)
    assert main(["grant-reconciler", "recon_x", "--print"]) == 0
    assert capsys.readouterr().out == grant_script("recon_x")
    assert main(["grant-reconciler", "recon_x"]) == 2
    assert "give --dsn" in capsys.readouterr().err
    role = f"recon_lp_{uuid.uuid4().hex[:12]}"
    assert main(["grant-reconciler", role, "--dsn", pg_dsn]) == 1
    assert f"no role named {role}" in capsys.readouterr().err
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        assert main(["migrate", "--dsn", pg_dsn, "--grant-reconciler", role]) == 0
        assert f"to {role}" in capsys.readouterr().out
        assert _rows(pg_dsn, "SELECT has_function_privilege(%s, "
                             "'public.recon_health_state(text,text,text,text,text,text,text,"
                             "text,text,text)', 'EXECUTE')", (role,)) == [(True,)]
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
