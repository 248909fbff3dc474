"""The trading gate's SQL functions against the real PostgreSQL: the watchdog's record and pause
(once per cycle, never over another source's pause), an operator's pause and resume, the
auto-resume's last check, the gate the trading app reads, and who may call them."""

import json
import os

import psycopg
import pytest

from recon_assets_tests.db.functions.decisions import operator_request

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def operator_runs(db):
    """The operator jobs' recorded requests the pauses and resumes below act for."""
    operator_request(db, "pause_profile", "run-pause")
    operator_request(db, "resume_profile", "run-resume")


def verdict(profile, tripped, notional=100.0, clean=None):
    return {"profile_id": profile, "allocated_capital_usd": 10000, "ghost_notional_usd": notional,
            "order_notional_usd": 0, "position_notional_usd": 0,
            "mismatch_notional_usd": notional if tripped or not clean else 0,
            "threshold_pct": 0.5, "threshold_usd": 50, "findings": 1 if tripped else 0,
            "tripped": tripped, "clean": (not tripped) if clean is None else clean,
            "reason": "the rule's sentence"}


def record(conn, cycle, *verdicts):
    return conn.execute("SELECT recon_record_watchdog(%s, 'acct1', %s::jsonb, 'run-1')",
                        (cycle, json.dumps(list(verdicts)))).fetchone()[0]


def gate(conn, profile):
    return conn.execute("SELECT trading_state, pause_source, paused_at, last_auto_resume_at "
                        "FROM profiles WHERE id = %s", (profile,)).fetchone()


def events(conn, profile):
    return [r[0] for r in conn.execute("SELECT action FROM recon.trading_gate_events "
                                       "WHERE profile_id = %s ORDER BY id", (profile,))]


def test_the_watchdog_pauses_a_tripped_profile_once_per_cycle(db):
    result = record(db, "c1", verdict("alpha", True), verdict("beta", False))
    assert (result["recorded"], result["paused"], result["already_recorded"]) == (2, ["alpha"], False)
    assert gate(db, "alpha")[:2] == ("paused", "parity_watchdog")
    assert gate(db, "beta")[:2] == ("active", None)
    assert record(db, "c1", verdict("alpha", True))["already_recorded"] is True
    assert events(db, "alpha") == ["watchdog_pause"]
    (triggered,) = db.execute("SELECT triggered FROM recon.watchdog_state WHERE profile_id = 'alpha'"
                              ).fetchone()
    assert triggered is True


def test_a_second_trip_keeps_the_pause_and_its_start(db):
    record(db, "c1", verdict("alpha", True))
    first = gate(db, "alpha")
    record(db, "c2", verdict("alpha", True))
    assert gate(db, "alpha") == first and events(db, "alpha") == ["watchdog_pause"]


def test_the_watchdog_never_turns_an_operators_pause_into_its_own(db):
    db.execute("SELECT recon_pause_profile('alpha', 'maintenance', 'run-pause')")
    record(db, "c1", verdict("alpha", True))
    assert gate(db, "alpha")[:2] == ("paused", "operator")
    assert events(db, "alpha") == ["operator_pause"]


def test_an_operator_takes_a_watchdog_pause_over_and_resumes_it(db):
    record(db, "c1", verdict("alpha", True))
    paused_at = gate(db, "alpha")[2]
    took = db.execute("SELECT recon_pause_profile('alpha', 'looking into it', 'run-pause')").fetchone()[0]
    assert (took["status"], took["previous_pause_source"], took["pause_source"]) == (
        "applied", "parity_watchdog", "operator")
    assert gate(db, "alpha")[:3] == ("paused", "operator", paused_at)
    again = db.execute("SELECT recon_pause_profile('alpha', 'still', 'run-pause')").fetchone()[0]
    assert again["status"] == "unchanged"
    db.execute("SELECT recon_resume_profile('alpha', 'explained', 'run-resume')")
    assert gate(db, "alpha")[:3] == ("active", None, None)
    assert events(db, "alpha") == ["watchdog_pause", "operator_pause", "operator_resume"]
    with pytest.raises(psycopg.errors.RaiseException, match="a reason is required"):
        db.execute("SELECT recon_pause_profile('alpha', '  ', 'run-pause')")


def test_a_resume_during_a_correction_restores_reconciling_not_active(db):
    db.execute("SELECT recon_begin_reconciling('alpha', 'run-corr')")
    record(db, "c1", verdict("alpha", True))
    assert gate(db, "alpha")[0] == "paused"
    db.execute("SELECT recon_resume_profile('alpha', 'ok', 'run-resume')")
    assert gate(db, "alpha")[0] == "reconciling"
    db.execute("SELECT recon_end_reconciling('alpha', 'run-corr')")
    assert gate(db, "alpha")[0] == "active"


def test_auto_resume_lifts_only_the_pause_it_judged(db):
    record(db, "c1", verdict("alpha", True))
    _state, _source, paused_at, last = gate(db, "alpha")
    evidence = json.dumps({"clean_cycles": ["c2", "c3"], "summary": "2 clean cycle(s): c2, c3"})
    # An operator paused it in the meantime: the auto-resume is refused.
    db.execute("SELECT recon_pause_profile('alpha', 'hold it', 'run-pause')")
    refused = db.execute("SELECT recon_auto_resume('alpha', 'c3', 'run-3', %s, %s, %s::jsonb)",
                         (paused_at, last, evidence)).fetchone()[0]
    assert (refused["status"], refused["reason"]) == ("refused", "pause_changed")
    assert gate(db, "alpha")[:2] == ("paused", "operator")


def test_auto_resume_records_its_evidence_and_the_time(db):
    record(db, "c1", verdict("alpha", True))
    _state, _source, paused_at, last = gate(db, "alpha")
    evidence = json.dumps({"clean_cycles": ["c2", "c3"], "summary": "2 clean cycle(s): c2, c3"})
    done = db.execute("SELECT recon_auto_resume('alpha', 'c3', 'run-3', %s, %s, %s::jsonb)",
                      (paused_at, last, evidence)).fetchone()[0]
    assert done["status"] == "applied"
    state, source, paused, resumed = gate(db, "alpha")
    assert (state, source, paused) == ("active", None, None) and resumed is not None
    (ev,) = db.execute("SELECT evidence, reason FROM recon.trading_gate_events "
                       "WHERE action = 'auto_resume'").fetchall()
    assert ev[0]["clean_cycles"] == ["c2", "c3"] and "c2, c3" in ev[1]
    # The same call again (a retried step) finds nothing to resume.
    assert db.execute("SELECT recon_auto_resume('alpha', 'c3', 'run-3', %s, %s, %s::jsonb)",
                      (paused_at, last, evidence)).fetchone()[0]["status"] == "refused"


def test_the_gate_the_trading_app_reads(db):
    record(db, "c1", verdict("alpha", True))
    assert db.execute("SELECT recon_may_trade('alpha'), recon_may_trade('beta'), "
                      "recon_may_trade('nobody')").fetchone() == (False, True, False)
    rows = dict(db.execute("SELECT profile_id, may_open_flows FROM recon_trading_gate").fetchall())
    assert rows == {"alpha": False, "beta": True}
    db.execute("SELECT recon_begin_reconciling('beta', 'run-corr')")
    assert db.execute("SELECT recon_may_trade('beta')").fetchone() == (False,)


def test_the_history_tables_are_append_only(db):
    record(db, "c1", verdict("alpha", True))
    for table in ("recon.watchdog_checks", "recon.trading_gate_events"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            db.execute(f"DELETE FROM {table}")


def test_public_may_not_change_or_read_the_gate(db):
    role = f"recon_nobody_{os.getpid()}"
    db.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        allowed = dict(db.execute(
            "SELECT p.proname, has_function_privilege(%s, p.oid, 'EXECUTE') FROM pg_proc p "
            "WHERE p.pronamespace = 'public'::regnamespace AND p.proname IN ("
            "'recon_record_watchdog', 'recon_pause_profile', 'recon_resume_profile', "
            "'recon_auto_resume', 'recon_may_trade')", (role,)).fetchall())
        view = db.execute("SELECT has_table_privilege(%s, 'public.recon_trading_gate', 'SELECT')",
                          (role,)).fetchone()[0]
    finally:
        db.execute(f"DROP ROLE {role}")
    assert allowed == dict.fromkeys(("recon_record_watchdog", "recon_pause_profile",
                                     "recon_resume_profile", "recon_auto_resume",
                                     "recon_may_trade"), False)
    assert view is False


def test_an_operator_action_is_taken_only_for_the_run_that_recorded_its_request(db):
    """Issue 38: pause, resume, a backfill review and a quarantine's end act only for a run
    whose operator job recorded its request first (recon.operator_actions): an invented run
    id, none, or one another job recorded is refused, no_recorded_request, and changes
    nothing."""
    before = gate(db, "alpha")
    db.execute("INSERT INTO recon.quarantine (profile_id, trade_id, slice_no, reason, cycle_id) "
               "VALUES ('alpha', 't1', 1, 'unattributed', 'c1')")
    (decision,) = db.execute(
        "INSERT INTO recon.backfill_decisions (cycle_id, exchange_account, symbol, "
        "exchange_fill_id, fill_side, fill_qty, fill_price, profile_id, trade_id, slice_no, "
        "slice_side, match_mode, strong, assignable, decision, reason, idempotency_key) "
        "VALUES ('c1', 'acct1', 'BTC/USDT:USDT', 'f1', 'sell', 1, 100, 'alpha', 't1', 1, 'long', "
        "'qty_unique', false, true, 'NO_GO', 'r', 'k') RETURNING id").fetchone()
    calls = {
        "pause": ("SELECT recon_pause_profile('alpha', 'why', %s)", ()),
        "resume": ("SELECT recon_resume_profile('alpha', 'why', %s)", ()),
        "review": ("SELECT recon_review_backfill(%s, 'approve', 'why', %s)", (decision,)),
        "quarantine": ("SELECT recon_resolve_quarantine('alpha', 't1', 1, 'release', 'why', %s)",
                       ()),
    }
    for name, (sql, args) in calls.items():
        for run_id in (None, "invented-run", "run-pause" if name != "pause" else "run-resume"):
            with pytest.raises(psycopg.Error) as err:
                db.execute(sql, (*args, run_id))
            assert err.value.sqlstate == "RCREF", (name, run_id)
            assert err.value.diag.message_detail == "no_recorded_request", (name, run_id)
    assert gate(db, "alpha") == before
    assert db.execute("SELECT count(*) FROM recon.backfill_reviews").fetchone() == (0,)
    assert db.execute("SELECT released_at FROM recon.quarantine").fetchone() == (None,)
