"""The integrity watchdog and auto-resume through real cycles: the simulator, real PostgreSQL,
real Dagster runs. Time is moved by the flags (a minimum pause or cooldown of 0 or an hour) and
by moving the recorded pause back in the database, never by sleeping.

closed_manually: beta (10,000 USD allocated) holds 2,000 ADA in the database that the exchange
closed from the web UI; at a mark price of 0.05 its ghost is 100 USD, 1 % of its capital (the
threshold is 0.5 %). alpha, on the same account, has nothing to do with it.
"""

from datetime import datetime

import dagster as dg
import psycopg
import pytest

from recon_assets.metrics.health import load_state
from recon_assets.settings import ReconSettings
from recon_assets_tests.defs.parity.test_heartbeat import check, parity_requests, slice_row
from recon_assets_tests.harness.dagster_flow import add_partitions, make_defs, query, run_scheduled_cycles

pytestmark = pytest.mark.integration


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def start(sim, dsn, instance, scenario="closed_manually", **settings):
    plan = sim.load_scenario(scenario)
    plan.seed_database(dsn)
    add_partitions(instance, plan)
    sim.exchange.set_mark_price("ADAUSDT", "0.05")
    return make_defs(sim, dsn, ReconSettings(**settings))


def cycle(defs, instance):
    """One scheduled cycle of acct1 (its run fails when the blocking watchdog check fails)."""
    return run_scheduled_cycles(defs, instance, expect_success=False)["acct1"]


def execute(dsn, statement):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def gate(dsn, profile):
    return query(dsn, "SELECT trading_state, pause_source FROM profiles WHERE id = %s",
                 (profile,))[0]


def evaluation(result, name):
    (found,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return found


def restore(sim):
    """The exchange holds beta's 2,000 ADA again: the ghost clears, cycles are clean."""
    sim.exchange.place_order("acct1", "ADAUSDT", "BUY", "MARKET", "2000",
                             client_order_id=f"web_back{len(sim.exchange.accounts)}")


def close_again(sim):
    sim.exchange.close_position("acct1", "ADAUSDT", client_order_id="web_gone")


def outlook(dsn, profile):
    return query(dsn, "SELECT resume_held_back_by, resume_clean_cycles_needed, resume_earliest_at "
                      "FROM recon.watchdog_state WHERE profile_id = %s", (profile,))[0]


def gate_events(dsn, profile):
    return query(dsn, "SELECT action, pause_source, reason, evidence FROM recon.trading_gate_events "
                      "WHERE profile_id = %s ORDER BY id", (profile,))


def operator(defs, instance, job, profile, reason):
    result = defs.resolve_job_def(job).execute_in_process(
        run_config={"ops": {f"{job}_op": {"config": {"profile_id": profile, "reason": reason}}}},
        instance=instance)
    assert result.success
    return result


def paused_by_the_watchdog(defs, instance, dsn):
    result = cycle(defs, instance)
    assert gate(dsn, "beta") == ("paused", "parity_watchdog")
    return result


def test_a_100_usd_ghost_on_10000_usd_pauses_that_profile_and_blocks_its_synthetic_exit(
        sim, pg_dsn, instance):
    """closed_before_history: beta's 2,000 ADA ghost (t-b6) has no real fill to wait for, so
    only the watchdog stands between it and a synthetic exit."""
    defs = start(sim, pg_dsn, instance, "closed_before_history", position_parity_confirmations=1)
    result = cycle(defs, instance)
    assert not result.success  # the blocking check failed the cycle's run ...
    assert query(pg_dsn, "SELECT status FROM recon.cycles WHERE cycle_id = %s",
                 (result.run_id,)) == [("succeeded",)]  # ... its findings stand
    assert gate(pg_dsn, "beta") == ("paused", "parity_watchdog")
    assert gate(pg_dsn, "alpha") == ("active", None)
    # Confirmed on its first sighting (N=1) and attributed, yet not closed: the watchdog tripped.
    row = check({"acct1": result}, "acct1", "t-b6")
    assert row["decision"] == "blocked" and "integrity watchdog tripped" in row["reason"]
    assert parity_requests(defs, instance)[0] == []
    assert slice_row(pg_dsn, "t-b6")[0] == "open"
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections WHERE handler = 'synthetic_exit'") == [(0,)]
    # The check: failed, ERROR, naming each profile's notional, capital and threshold.
    e = evaluation(result, "integrity_watchdog")
    assert not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    assert e.metadata["tripped_profiles"].value == ["beta"]
    assert e.metadata["beta/mismatch_notional_usd"].value == pytest.approx(100.0)
    assert e.metadata["beta/threshold_usd"].value == pytest.approx(50.0)
    assert e.metadata["alpha/mismatch_notional_usd"].value == 0.0
    assert "10000" in e.metadata["profiles"].value
    verdicts = dict((p, (float(n), float(c), float(t), tripped)) for p, n, c, t, tripped in query(
        pg_dsn, "SELECT profile_id, mismatch_notional_usd, allocated_capital_usd, threshold_usd, "
                "tripped FROM recon.watchdog_checks WHERE cycle_id = %s", (result.run_id,)))
    assert verdicts["beta"] == (pytest.approx(100.0), 10000.0, 50.0, True)
    assert verdicts["alpha"][3] is False
    # Recorded, alerted, visible.
    (event,) = gate_events(pg_dsn, "beta")
    assert event[:2] == ("watchdog_pause", "parity_watchdog") and "exceeds 0.5 %" in event[2]
    assert query(pg_dsn, "SELECT profile_id FROM recon.alerts WHERE reason = 'watchdog_pause'") == [
        ("beta",)]
    health = load_state(pg_dsn).health
    assert health["reconciliationIntegrityWatchdogTriggered"] is True
    profiles = {p["profileId"]: p for p in health["profiles"]}
    assert (profiles["beta"]["tradingState"], profiles["beta"]["pauseSource"]) == (
        "paused", "parity_watchdog")
    assert profiles["beta"]["pausedAt"] and profiles["alpha"]["tradingState"] == "active"
    assert query(pg_dsn, "SELECT may_open_flows FROM recon_trading_gate WHERE profile_id = 'beta'") == [
        (False,)]
    assert query(pg_dsn, "SELECT recon_may_trade('alpha'), recon_may_trade('beta')") == [(True, False)]


def test_resumes_on_exactly_the_cycle_all_four_conditions_hold(sim, pg_dsn, instance):
    defs = start(sim, pg_dsn, instance, watchdog_auto_resume_min_pause_ms=0,
                 watchdog_auto_resume_clean_cycles=2, watchdog_auto_resume_cooldown_ms=0)
    paused_by_the_watchdog(defs, instance, pg_dsn)
    restore(sim)
    first = cycle(defs, instance)
    assert first.success and gate(pg_dsn, "beta") == ("paused", "parity_watchdog")
    e = evaluation(first, "watchdog_auto_resume")
    assert not e.passed and e.severity == dg.AssetCheckSeverity.WARN
    assert outlook(pg_dsn, "beta")[:2] == (["clean_streak"], 1)
    second = cycle(defs, instance)
    assert second.success and gate(pg_dsn, "beta") == ("active", None)
    assert evaluation(second, "watchdog_auto_resume").passed
    action, _source, _reason, evidence = gate_events(pg_dsn, "beta")[-1]
    assert action == "auto_resume" and evidence["clean_cycles"] == [first.run_id, second.run_id]
    assert query(pg_dsn, "SELECT count(*) FROM recon.alerts WHERE reason = 'auto_resume' "
                         "AND profile_id = 'beta'") == [(1,)]
    assert query(pg_dsn, "SELECT last_auto_resume_at IS NOT NULL FROM profiles WHERE id = 'beta'") == [
        (True,)]
    assert load_state(pg_dsn).health["reconciliationIntegrityWatchdogTriggered"] is False


def test_not_before_the_minimum_pause(sim, pg_dsn, instance):
    defs = start(sim, pg_dsn, instance, watchdog_auto_resume_min_pause_ms=3_600_000,
                 watchdog_auto_resume_clean_cycles=1, watchdog_auto_resume_cooldown_ms=0)
    paused_by_the_watchdog(defs, instance, pg_dsn)
    restore(sim)
    for _ in range(2):
        cycle(defs, instance)
        assert gate(pg_dsn, "beta") == ("paused", "parity_watchdog")
    held, needed, earliest = outlook(pg_dsn, "beta")
    (paused_at,) = query(pg_dsn, "SELECT paused_at FROM profiles WHERE id = 'beta'")[0]
    assert (held, needed) == (["min_pause"], 0)
    assert (earliest - paused_at).total_seconds() == 3600
    health = {p["profileId"]: p for p in load_state(pg_dsn).health["profiles"]}
    assert health["beta"]["autoResumeHeldBackBy"] == ["min_pause"]
    assert datetime.fromisoformat(health["beta"]["autoResumeEarliestAt"]) == earliest
    # An hour later (the pause moved back by the clock it was stamped with): resumed.
    execute(pg_dsn, "UPDATE profiles SET paused_at = paused_at - interval '61 minutes' "
                    "WHERE id = 'beta'")
    cycle(defs, instance)
    assert gate(pg_dsn, "beta") == ("active", None)


def test_a_failed_cycle_breaks_the_clean_streak(sim, pg_dsn, instance):
    defs = start(sim, pg_dsn, instance, watchdog_auto_resume_min_pause_ms=0,
                 watchdog_auto_resume_clean_cycles=2, watchdog_auto_resume_cooldown_ms=0)
    paused_by_the_watchdog(defs, instance, pg_dsn)
    restore(sim)
    assert cycle(defs, instance).success
    sim.exchange.inject_fault("server_error", path="/fapi/v3/positionRisk", count=None)
    failed = cycle(defs, instance)
    assert not failed.success
    sim.exchange.clear_faults()
    cycle(defs, instance)
    assert gate(pg_dsn, "beta") == ("paused", "parity_watchdog")
    ((conditions,),) = query(pg_dsn, "SELECT resume_conditions FROM recon.watchdog_state "
                                     "WHERE profile_id = 'beta'")
    streak = next(c for c in conditions if c["name"] == "clean_streak")
    assert not streak["holds"] and f"cycle {failed.run_id} was not clean" in streak["detail"]
    cycle(defs, instance)
    assert gate(pg_dsn, "beta") == ("active", None)


def test_never_twice_within_the_cooldown(sim, pg_dsn, instance):
    defs = start(sim, pg_dsn, instance, watchdog_auto_resume_min_pause_ms=0,
                 watchdog_auto_resume_clean_cycles=1, watchdog_auto_resume_cooldown_ms=3_600_000)
    paused_by_the_watchdog(defs, instance, pg_dsn)
    restore(sim)
    cycle(defs, instance)
    assert gate(pg_dsn, "beta") == ("active", None)  # the first auto-resume: no cooldown yet
    close_again(sim)
    paused_by_the_watchdog(defs, instance, pg_dsn)
    restore(sim)
    cycle(defs, instance)
    assert gate(pg_dsn, "beta") == ("paused", "parity_watchdog")
    held, _needed, earliest = outlook(pg_dsn, "beta")
    (last,) = query(pg_dsn, "SELECT last_auto_resume_at FROM profiles WHERE id = 'beta'")[0]
    assert held == ["cooldown"] and (earliest - last).total_seconds() == 3600
    execute(pg_dsn, "UPDATE profiles SET last_auto_resume_at = last_auto_resume_at "
                    "- interval '61 minutes' WHERE id = 'beta'")
    cycle(defs, instance)
    assert gate(pg_dsn, "beta") == ("active", None)
    assert [a for a, *_ in gate_events(pg_dsn, "beta")] == [
        "watchdog_pause", "auto_resume", "watchdog_pause", "auto_resume"]


def test_an_operators_pause_is_never_auto_resumed(sim, pg_dsn, instance):
    defs = start(sim, pg_dsn, instance, watchdog_auto_resume_min_pause_ms=0,
                 watchdog_auto_resume_clean_cycles=1, watchdog_auto_resume_cooldown_ms=0)
    operator(defs, instance, "pause_profile", "alpha", "exchange maintenance")
    paused_by_the_watchdog(defs, instance, pg_dsn)
    # The operator takes the watchdog's pause of beta over: it is theirs now.
    operator(defs, instance, "pause_profile", "beta", "investigating the ADA ghost")
    restore(sim)
    for _ in range(2):
        assert cycle(defs, instance).success
    assert gate(pg_dsn, "alpha") == ("paused", "operator")
    assert gate(pg_dsn, "beta") == ("paused", "operator")
    assert outlook(pg_dsn, "beta")[0] == ["pause_source"] and outlook(pg_dsn, "beta")[2] is None
    operator(defs, instance, "resume_profile", "beta", "ghost explained: web UI close")
    assert gate(pg_dsn, "beta") == ("active", None)
    assert [(a, r) for a, _s, r, _e in gate_events(pg_dsn, "beta")][1:] == [
        ("operator_pause", "investigating the ADA ghost"),
        ("operator_resume", "ghost explained: web UI close")]


def test_with_auto_resume_off_only_an_operator_resumes(sim, pg_dsn, instance):
    defs = start(sim, pg_dsn, instance, enable_watchdog_auto_resume=False,
                 watchdog_auto_resume_min_pause_ms=0, watchdog_auto_resume_clean_cycles=1,
                 watchdog_auto_resume_cooldown_ms=0)
    paused_by_the_watchdog(defs, instance, pg_dsn)
    restore(sim)
    for _ in range(2):
        cycle(defs, instance)
    assert gate(pg_dsn, "beta") == ("paused", "parity_watchdog")
    assert outlook(pg_dsn, "beta")[0] == ["auto_resume_enabled"]
    operator(defs, instance, "resume_profile", "beta", "checked by hand")
    assert gate(pg_dsn, "beta") == ("active", None)


def test_an_exchange_reporting_no_positions_pauses_instead_of_mass_closing(sim, pg_dsn, instance):
    """systemic_glitch with the runbook's defaults and N=1: every slice is a ghost no real fill
    explains, of two profiles at once: the account is systemic, every profile trips, every slice
    is held, nothing is closed."""
    plan = sim.load_scenario("systemic_glitch")
    plan.seed_database(pg_dsn)
    add_partitions(instance, plan)
    defs = make_defs(sim, pg_dsn, ReconSettings(position_parity_confirmations=1))
    results = run_scheduled_cycles(defs, instance, expect_success=False)
    frame = results["acct1"].output_for_node("position_parity_heartbeat")
    assert frame["ghost"].all() and set(frame["decision"]) == {"held"}
    assert all("systemic" in r for r in frame["reason"])
    assert parity_requests(defs, instance)[0] == []
    assert {p: g for p, g in query(pg_dsn, "SELECT id, pause_source FROM profiles "
                                           "WHERE exchange_account = 'acct1'")} == {
        "alpha": "parity_watchdog", "beta": "parity_watchdog"}
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections") == [(0,)]
