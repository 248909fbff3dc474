"""The policy replay over a history recorded through real cycles (the simulator, real
PostgreSQL, real Dagster runs), run as the Launchpad runs it: the `policy_replay` job.

closed_before_history: beta (10,000 USD allocated) holds 2,000 ADA in the database that the
exchange closed from the web UI before its trade history begins (no real fill explains it); at a
mark price of 0.05 its ghost is 100 USD, 1 % of its capital. Live
flags: three confirmations, the watchdog at 5 % (it does not trip), no minimum pause or
cooldown. Five cycles are recorded: the ghost is confirming in the first two, closed by a
synthetic exit in the third (the position_parity job applies it), and the last two are clean.
A second record, closed_manually (the same close with its real fill in the history, a NO_GO for
an operator), shows what the EXIT backfill's heuristics would have done.
"""

import dagster as dg
import psycopg
import pytest

from recon_assets.settings import ReconSettings
from recon_assets_tests.defs.parity.test_heartbeat import parity_requests, slice_row
from recon_assets_tests.defs.parity.test_watchdog import cycle, start
from recon_assets_tests.harness.dagster_flow import query, run_requests
from recon_assets_tests.harness.tables import table_rows

pytestmark = pytest.mark.integration

LIVE = dict(position_parity_confirmations=3, position_parity_max_notional_pct=5.0,
            watchdog_auto_resume_min_pause_ms=0, watchdog_auto_resume_cooldown_ms=0)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def recorded(sim, pg_dsn, instance):
    """Five real cycles of acct1; returns the definitions and the cycles' run ids."""
    defs = start(sim, pg_dsn, instance, scenario="closed_before_history", **LIVE)
    runs = []
    for n in range(5):
        result = cycle(defs, instance)
        assert result.success, n
        runs.append(result.run_id)
        if n == 2:
            requests, _ = parity_requests(defs, instance)
            assert requests, "the third cycle confirmed the ghost: a synthetic exit is requested"
            assert all(r.success for r in run_requests(defs, instance, "position_parity",
                                                       requests))
    assert slice_row(pg_dsn, "t-b6")[0] == "closed"
    decisions = query(pg_dsn, "SELECT cycle_id, decision, streak FROM recon.parity_checks "
                              "WHERE trade_id = 't-b6' ORDER BY checked_at")
    assert [(d, s) for _, d, s in decisions] == [("confirming", 1), ("confirming", 2),
                                                 ("synthetic_exit", 3)]
    return defs, runs


def replay_run(defs, instance, **config):
    result = defs.resolve_job_def("policy_replay").execute_in_process(
        run_config={"ops": {"policy_replays": {"config": config}}}, instance=instance,
        raise_on_error=False)
    return result


def materialization(result):
    (m,) = result.asset_materializations_for_node("policy_replays")
    return {k: v.value for k, v in m.metadata.items()}


def events(dsn, run_id, policy, kind):
    return query(dsn, "SELECT profile_id, trade_id, cycle_id, cycles_from_live, live_cycle_id, "
                      "heuristic, notional_usd, duration_s FROM recon.policy_replay_events "
                      "WHERE replay_id = %s AND policy = %s AND kind = %s ORDER BY at",
                 (run_id, policy, kind))


def not_the_replays(table, _row):
    """Everything but the replays' own rows and their launches (recon.operator_actions, which
    test_operator_record.py checks)."""
    return not table.startswith("recon.policy_replay") and table != "recon.operator_actions"


def test_the_live_flags_reproduce_the_record_and_other_flags_show_what_they_would_have_done(
        recorded, sim, pg_dsn, instance):
    defs, runs = recorded
    before = table_rows(pg_dsn, keep=not_the_replays)

    # 1. The live flags: every recorded decision reproduced; the live exit is in the third cycle.
    live = replay_run(defs, instance, accounts=["acct1"])
    assert live.success
    # The launch is recorded (issue 38), with its config.
    assert query(pg_dsn, "SELECT job, run_id, config FROM recon.operator_actions") == [
        ("policy_replay", live.run_id, live.dagster_run.run_config)]
    meta = materialization(live)
    assert meta["fidelity_ok"] is True and meta["differences"] == 0, meta["first_difference"]
    assert meta["cycles_replayed"] == 5
    assert "reproduce every recorded decision" in meta["summary"]
    [(profile, trade, cycle_id, *_)] = events(pg_dsn, live.run_id, "live", "synthetic_exit")
    assert (profile, trade, cycle_id) == ("beta", "t-b6", runs[2])
    # Without overrides the replay is the live fold: the same exit, zero cycles from it.
    [same] = events(pg_dsn, live.run_id, "replay", "synthetic_exit")
    assert same[:5] == ("beta", "t-b6", runs[2], 0, runs[2])
    assert query(pg_dsn, "SELECT fidelity_ok, cycles, overrides, accounts FROM "
                         "recon.policy_replays WHERE replay_id = %s",
                 (live.run_id,)) == [(True, 5, {}, ["acct1"])]

    # 2. CONFIRMATIONS=1: the exit two cycles earlier, in the first cycle.
    one = replay_run(defs, instance, overrides={"RECON_POSITION_PARITY_CONFIRMATIONS": "1"})
    assert one.success and materialization(one)["fidelity_ok"] is True
    [(profile, trade, cycle_id, earlier, live_cycle, *_)] = events(
        pg_dsn, one.run_id, "replay", "synthetic_exit")
    assert (profile, trade, cycle_id, earlier, live_cycle) == ("beta", "t-b6", runs[0], -2,
                                                               runs[2])
    assert "synthetic_exit 1 → 1" in materialization(one)["summary"]

    # 3. A lower watchdog percent: 100 USD is over 0.5 % of 10,000 USD, so beta would have been
    # paused in the first cycle, which did not happen live; its ghost blocked, not closed.
    low = replay_run(defs, instance,
                     overrides={"RECON_POSITION_PARITY_MAX_NOTIONAL_PCT": "0.5"})
    assert low.success
    assert events(pg_dsn, low.run_id, "live", "watchdog_pause") == []
    [(profile, _, cycle_id, _, _, _, notional, duration)] = events(
        pg_dsn, low.run_id, "replay", "watchdog_pause")
    assert (profile, cycle_id, float(notional)) == ("beta", runs[0], pytest.approx(100.0))
    assert duration is None  # the ghost stays (no exit while tripped): never clean again
    assert events(pg_dsn, low.run_id, "replay", "synthetic_exit") == []
    meta = materialization(low)
    assert meta["replay/watchdog_pause"] == 1 and meta["live/watchdog_pause"] == 0
    assert "watchdog_pause 0 → 1" in meta["summary"]
    assert "watchdog_pause" in meta["per_day"]

    # Nothing the replays did changed a trading table or the loop's records.
    assert table_rows(pg_dsn, keep=not_the_replays) == before
    assert query(pg_dsn, "SELECT count(*) FROM recon.policy_replays") == [(3,)]


def test_heuristics_would_have_booked_the_web_ui_close_the_live_loop_held_for_an_operator(
        sim, pg_dsn, instance):
    defs = start(sim, pg_dsn, instance, scenario="closed_manually", **LIVE)
    for n in range(5):
        assert cycle(defs, instance).success, n
    # Live: the real fill waits for an operator (NO_GO), so the ghost is held, never closed.
    decisions = query(pg_dsn, "SELECT DISTINCT decision FROM recon.parity_checks "
                              "WHERE trade_id = 't-b5'")
    assert decisions == [("held",)]
    assert slice_row(pg_dsn, "t-b5")[0] == "open"
    before = table_rows(pg_dsn, keep=not_the_replays)
    loose = replay_run(defs, instance, overrides={
        "RECON_EXIT_BACKFILL_ALLOW_HEURISTIC_MATCH": "true",
        "RECON_EXIT_BACKFILL_REQUIRE_STRONG_ATTRIBUTION": "false"})
    assert loose.success and materialization(loose)["fidelity_ok"] is True
    gos = events(pg_dsn, loose.run_id, "replay", "backfill_go")
    assert gos and gos[0][:2] == ("beta", "t-b5") and gos[0][5] is True
    assert events(pg_dsn, loose.run_id, "live", "backfill_go") == []
    assert events(pg_dsn, loose.run_id, "replay", "synthetic_exit") == []
    assert table_rows(pg_dsn, keep=not_the_replays) == before


def test_a_bad_override_fails_the_run_naming_it_and_records_nothing(recorded, pg_dsn, instance):
    defs, _ = recorded
    result = replay_run(defs, instance, overrides={"RECON_POSITION_PARITY_CONFIRMATIONS": "0",
                                                   "RECON_NOT_A_FLAG": "1"})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "RECON_NOT_A_FLAG" in message and "replayable" in message
    result = replay_run(defs, instance, overrides={"RECON_POSITION_PARITY_CONFIRMATIONS": "0"})
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "expected a whole number >= 1" in failure.step_failure_data.error.message
    result = replay_run(defs, instance, since="yesterday")
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "not an ISO time" in failure.step_failure_data.error.message
    assert query(pg_dsn, "SELECT count(*) FROM recon.policy_replays") == [(0,)]


def test_a_replay_reports_a_record_it_cannot_reproduce_as_a_defect(recorded, sim, pg_dsn,
                                                                   instance):
    """A recorded decision the live flags cannot reproduce (here a watchdog pause no rule would
    have made, written behind the loop's back) is reported as a replay defect, with its cycle."""
    defs, runs = recorded
    # The record says the watchdog paused beta in the fourth cycle; no rule would have.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO recon.trading_gate_events (profile_id, action, previous_state, "
                     "trading_state, pause_source, reason, cycle_id, at) VALUES ('beta', "
                     "'watchdog_pause', 'active', 'paused', 'parity_watchdog', 'forged', %s, "
                     "now())", (runs[3],))
    result = replay_run(defs, instance)
    meta = materialization(result)
    assert meta["fidelity_ok"] is False and meta["differences"] >= 1
    assert meta["first_difference"]["cycle_id"] == runs[3]
    assert meta["first_difference"]["what"] == "gate"
    assert "Replay defect" in meta["summary"]
    assert query(pg_dsn, "SELECT fidelity_ok, first_difference->>'cycle_id' FROM "
                         "recon.policy_replays") == [(False, runs[3])]


def test_settings_flags_are_what_the_live_fold_falls_back_on():
    from recon_assets.defs.replay.assets import flag_values, replay_policy
    settings = ReconSettings(**LIVE)
    assert flag_values(settings)["RECON_POSITION_PARITY_CONFIRMATIONS"] == 3
    policy = replay_policy(settings, {"position_parity_confirmations": 1})
    assert policy.parity.confirmations == 1 and policy.max_notional_pct == 5.0
    assert policy.resume.min_pause_ms == 0 and not policy.backfill.heuristics_go
