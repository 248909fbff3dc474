"""The parity heartbeat through the real automation path: the scheduled cycle (with the
heartbeat), the position_parity sensor and job, against the simulator (real ccxt over HTTP) and
the real PostgreSQL."""

import time
from decimal import Decimal

import dagster as dg
import psycopg
import pytest

from recon_assets.settings import ReconSettings
from recon_assets_tests.harness.dagster_flow import (add_partitions, evaluate_sensor, make_defs,
                                                     query, run_requests, run_scheduled_cycles)

pytestmark = pytest.mark.integration


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def start(sim, dsn, instance, scenario, **settings):
    """The scenario on both sides, and definitions with `settings`. The integrity watchdog's
    threshold is out of the way here (100 % of capital): these tests are about the heartbeat's
    own rules; the watchdog's are in test_watchdog.py."""
    settings.setdefault("position_parity_max_notional_pct", 100.0)
    plan = sim.load_scenario(scenario)
    plan.seed_database(dsn)
    add_partitions(instance, plan)
    return make_defs(sim, dsn, ReconSettings(**settings))


def heartbeat(results, account):
    return results[account].output_for_node("position_parity_heartbeat")


def check(results, account, trade):
    frame = heartbeat(results, account)
    (row,) = frame[frame["trade_id"] == trade].to_dict("records")
    return row


def parity_requests(defs, instance, cursor=None):
    tick = evaluate_sensor(defs, instance, "position_parity_sensor", cursor)
    return tick.run_requests, tick.cursor


def slice_row(dsn, trade):
    return query(dsn, "SELECT status, exit_qty, exit_price, close_reason, virtual_open_qty "
                      "FROM trade_history WHERE trade_id = %s", (trade,))[0]


def books_are_whole(dsn, profile):
    """Position = signed sum of booked fills; ledger = its recalculation from scratch."""
    ((position, fills),) = query(dsn, """
        SELECT COALESCE((SELECT sum(CASE side WHEN 'long' THEN qty ELSE -qty END) FROM positions
                         WHERE profile_id = %s AND symbol = 'ADA/USDT:USDT'), 0),
               COALESCE((SELECT sum(CASE side WHEN 'buy' THEN qty ELSE -qty END) FROM applied_fills
                         WHERE profile_id = %s AND symbol = 'ADA/USDT:USDT'), 0)""",
                                   (profile, profile))
    assert position == fills
    ledger = dict(query(dsn, "SELECT trade_id, reserved_usd FROM capital_ledger WHERE profile_id = %s",
                        (profile,)))
    scratch = dict(query(dsn, "SELECT trade_id, sum(virtual_open_qty * entry_price) FROM trade_history "
                              "WHERE profile_id = %s AND status = 'open' GROUP BY trade_id", (profile,)))
    assert ledger == scratch


@pytest.mark.parametrize("n", [3, 2])
def test_a_ghost_is_closed_on_exactly_the_nth_consecutive_confirmation(sim, pg_dsn, instance, n):
    """closed_before_history: beta's ADA position was closed before the exchange's trade history
    begins (no real fill to book); its slice t-b6 (an attributed ghost) is confirmed for N
    cycles, then closed at the mark price, once."""
    defs = start(sim, pg_dsn, instance, "closed_before_history", position_parity_confirmations=n)
    cursor = None
    for i in range(1, n + 1):
        results = run_scheduled_cycles(defs, instance)
        row = check(results, "acct1", "t-b6")
        assert (row["ghost"], row["streak"], row["attributable"]) == (True, i, True)
        requests, cursor = parity_requests(defs, instance, cursor)
        if i < n:
            assert row["decision"] == "confirming" and requests == []
            assert slice_row(pg_dsn, "t-b6")[0] == "open"
    assert row["decision"] == "synthetic_exit"
    (request,) = requests
    assert request.partition_key == "beta"
    (run,) = run_requests(defs, instance, "position_parity", requests)
    assert run.success
    assert [o["status"] for o in run.output_for_node("apply_parity")["outcomes"]] == ["applied"]
    mark = Decimal(str(sim.exchange.markets["ADAUSDT"].mark_price))
    assert slice_row(pg_dsn, "t-b6") == ("closed", Decimal("2000"), mark, "parity_synthetic_exit",
                                         Decimal("0"))
    ((evidence, source),) = query(pg_dsn, "SELECT evidence->'input', evidence->'request'->>"
                                          "'price_source' FROM recon.corrections "
                                          "WHERE handler = 'synthetic_exit'")
    assert source == "mark_price" and evidence["streak"] == n
    assert query(pg_dsn, "SELECT qty, side FROM positions WHERE profile_id = 'beta' "
                         "AND symbol = 'ADA/USDT:USDT'") == []
    books_are_whole(pg_dsn, "beta")
    # A re-run of the same job, and the next cycle, close nothing again.
    (again,) = run_requests(defs, instance, "position_parity", requests)
    assert [o["status"] for o in again.output_for_node("apply_parity")["outcomes"]] == [
        "already_applied"]
    results = run_scheduled_cycles(defs, instance)
    assert "t-b6" not in set(heartbeat(results, "acct1")["trade_id"])
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections WHERE handler = 'synthetic_exit'") == [
        (1,)]
    assert {s for (s,) in query(pg_dsn, "SELECT trading_state FROM profiles")} == {"active"}


LONG_AGO_MS = 13 * 86_400_000  # before the trade history and the fills window: no evidence


def test_a_broken_streak_starts_again(sim, pg_dsn, instance):
    """Two confirmations, then the position is back on the exchange (cleared), then gone again
    (1), then a cycle fails (a failed snapshot), then the streak starts at 1 once more. The
    position moves by fills older than the trade history, so no real fill explains them."""
    defs = start(sim, pg_dsn, instance, "closed_before_history")
    for _ in range(2):
        results = run_scheduled_cycles(defs, instance)
    assert check(results, "acct1", "t-b6")["streak"] == 2
    long_ago = int(time.time() * 1000) - LONG_AGO_MS
    sim.exchange.place_order("acct1", "ADAUSDT", "BUY", "MARKET", "2000",
                             client_order_id="web_back1", at_ms=long_ago)
    assert check(run_scheduled_cycles(defs, instance), "acct1", "t-b6")["decision"] == "cleared"
    sim.exchange.close_position("acct1", "ADAUSDT", client_order_id="web_gone2", at_ms=long_ago)
    assert check(run_scheduled_cycles(defs, instance), "acct1", "t-b6")["streak"] == 1
    assert check(run_scheduled_cycles(defs, instance), "acct1", "t-b6")["streak"] == 2
    sim.exchange.inject_fault("server_error", path="/fapi/v3/positionRisk", count=None)
    failed = run_scheduled_cycles(defs, instance, expect_success=False)
    assert not failed["acct1"].success
    sim.exchange.clear_faults()
    row = check(run_scheduled_cycles(defs, instance), "acct1", "t-b6")
    assert (row["streak"], row["decision"]) == (1, "confirming")
    assert slice_row(pg_dsn, "t-b6")[0] == "open"


def test_a_web_ui_close_waits_for_the_operator_on_its_real_fill(sim, pg_dsn, instance):
    """closed_manually: beta's ADA closed from the web UI a moment ago; its real fill is a NO_GO
    backfill candidate (no strong attribution) awaiting an operator. The heartbeat never closes
    the slice at the mark while it waits, whatever the confirmations; once the operator approves
    the fill, the slice is closed at the fill's real price."""
    defs = start(sim, pg_dsn, instance, "closed_manually", position_parity_confirmations=1)
    for _ in range(3):
        results = run_scheduled_cycles(defs, instance)
        row = check(results, "acct1", "t-b5")
        assert (row["ghost"], row["decision"], row["streak"]) == (True, "held", 0)
        assert "NO_GO awaiting an operator" in row["reason"]
        assert parity_requests(defs, instance)[0] == []
    assert slice_row(pg_dsn, "t-b5")[0] == "open"
    (decision_id, price) = query(pg_dsn, "SELECT id, fill_price FROM recon.backfill_decisions "
                                         "WHERE trade_id = 't-b5' ORDER BY id DESC LIMIT 1")[0]
    approve = defs.resolve_job_def("approve_backfill")
    assert approve.execute_in_process(run_config={"ops": {"approve_backfill_op": {"config": {
        "decision_id": decision_id, "note": "the web-UI close of t-b5"}}}},
        instance=instance).success
    status, exit_qty, exit_price, reason, _open = slice_row(pg_dsn, "t-b5")
    assert (status, exit_price, reason) == ("closed", price, "exit_fill_backfilled")
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections WHERE handler = "
                         "'synthetic_exit'") == [(0,)]


def test_an_unattributed_ghost_is_quarantined_never_closed_and_released_when_it_clears(
        sim, pg_dsn, instance):
    defs = start(sim, pg_dsn, instance, "unattributed_ghost", position_parity_confirmations=2)
    cursor = None
    for _ in range(4):
        results = run_scheduled_cycles(defs, instance)
        requests, cursor = parity_requests(defs, instance, cursor)
        assert requests == []
    row = check(results, "acct2", "t-g2")
    assert (row["decision"], row["attributable"]) == ("quarantine", False)
    assert "does not carry sub-tag attribution" in row["attribution"]
    assert query(pg_dsn, "SELECT profile_id, trade_id, released_at IS NULL FROM recon.quarantine") == [
        ("gamma", "t-g2", True)]
    assert slice_row(pg_dsn, "t-g2")[0] == "open"
    mat = results["acct2"].asset_materializations_for_node("position_parity_heartbeat")[0]
    assert mat.metadata["reconciliationParityQuarantinedTrades"].value == 1
    assert "t-g2" in mat.metadata["checks_behind_them"].value
    # The position is back on the exchange: the quarantine holds until the exchange has
    # supported the slice for the confirmation count (2) in a row, then it is released, with an
    # alert saying why.
    sim.exchange.place_order("acct2", "SOLUSDT", "SELL", "MARKET", "20", client_order_id="web_back3")
    row = check(run_scheduled_cycles(defs, instance), "acct2", "t-g2")
    assert (row["decision"], row["clear_streak"]) == ("quarantine", 1)
    assert query(pg_dsn, "SELECT released_at IS NULL, clear_count FROM recon.quarantine") == [
        (True, 1)]
    row = check(run_scheduled_cycles(defs, instance), "acct2", "t-g2")
    assert (row["decision"], row["clear_streak"]) == ("cleared", 2)
    assert query(pg_dsn, "SELECT released_at IS NOT NULL, resolution FROM recon.quarantine") == [
        (True, "cleared")]
    (alert,) = query(pg_dsn, "SELECT summary FROM recon.alerts WHERE reason = 'quarantine_released'")
    assert "t-g2" in alert[0] and "supported the slice 2 consecutive cycles" in alert[0]
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections") == [(0,)]


def test_an_operator_resolves_a_quarantine_and_approves_the_close(sim, pg_dsn, instance):
    defs = start(sim, pg_dsn, instance, "unattributed_ghost", position_parity_confirmations=1)
    run_scheduled_cycles(defs, instance)
    job = defs.resolve_job_def("resolve_quarantine")
    config = {"ops": {"resolve_quarantine_op": {"config": {
        "profile_id": "gamma", "trade_id": "t-g2", "slice_no": 1,
        "resolution": "approve_synthetic_exit", "note": "legacy order, closed on the web UI"}}}}
    assert job.execute_in_process(run_config=config, instance=instance).success
    (row,) = query(pg_dsn, "SELECT resolution, note, released_by LIKE 'operator:%%' "
                           "FROM recon.quarantine")
    assert row == ("approve_synthetic_exit", "legacy order, closed on the web UI", True)
    # Resolving it again fails: it is not quarantined any more.
    assert not job.execute_in_process(run_config=config, instance=instance,
                                      raise_on_error=False).success
    results = run_scheduled_cycles(defs, instance)
    assert check(results, "acct2", "t-g2")["decision"] == "synthetic_exit"
    requests, _ = parity_requests(defs, instance)
    (run,) = run_requests(defs, instance, "position_parity", requests)
    assert run.success and slice_row(pg_dsn, "t-g2")[0] == "closed"


def _two_profiles_on_link(sim, dsn):
    """alpha and beta both long LINK on acct1 in the database (10 and 4); the exchange holds 4:
    only alpha's slice explains the shortfall."""
    sim.exchange.place_order("acct1", "LINKUSDT", "BUY", "MARKET", "4", client_order_id="rc.BET.t-l2.E1")
    with psycopg.connect(dsn) as conn:
        for profile, tag, trade, qty in (("alpha", "ALP", "t-l1", 10), ("beta", "BET", "t-l2", 4)):
            conn.execute(
                "INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id, "
                "status, qty, filled_qty, avg_fill_price, created_at, updated_at) VALUES "
                "(%s, %s, 'ENTRY', 'LINK/USDT:USDT', 'buy', %s, 'filled', %s, %s, 15, "
                "now() - interval '1 hour', now() - interval '1 hour')",
                (profile, trade, f"rc.{tag}.{trade}.E1", qty, qty))
            conn.execute(
                "INSERT INTO trade_history (trade_id, profile_id, symbol, side, entry_qty, "
                "entry_price, opened_at, updated_at) VALUES (%s, %s, 'LINK/USDT:USDT', 'long', %s, "
                "15, now() - interval '1 hour', now() - interval '1 hour')", (trade, profile, qty))
            conn.execute(
                "INSERT INTO positions (profile_id, symbol, side, qty, avg_price, updated_at) "
                "VALUES (%s, 'LINK/USDT:USDT', 'long', %s, 15, now() - interval '1 hour')",
                (profile, qty))


def test_two_profiles_on_one_symbol_no_slice_is_singled_out_by_its_size(sim, pg_dsn, instance):
    """alpha long 10 and beta long 4 LINK on acct1 in the database; the exchange holds 4. That
    alpha's slice is the one gone is only a guess (its size matches the gap): both slices are
    ambiguous, reported, and neither is closed, whatever the confirmations."""
    defs = start(sim, pg_dsn, instance, "clean", position_parity_confirmations=1)
    _two_profiles_on_link(sim, pg_dsn)
    for _ in range(2):
        results = run_scheduled_cycles(defs, instance)
        alpha, beta = check(results, "acct1", "t-l1"), check(results, "acct1", "t-l2")
        assert (alpha["ghost"], alpha["decision"]) == (False, "ambiguous")
        assert (beta["ghost"], beta["decision"]) == (False, "ambiguous")
        assert "no slice is singled out by its size" in alpha["reason"]
        assert parity_requests(defs, instance)[0] == []
    assert slice_row(pg_dsn, "t-l1")[0] == "open" and slice_row(pg_dsn, "t-l2")[0] == "open"


def test_dry_run_changes_nothing_and_the_flag_off_decides_nothing(sim, pg_dsn, instance):
    defs = start(sim, pg_dsn, instance, "closed_before_history", position_parity_confirmations=1,
                 position_parity_dry_run=True)
    before = query(pg_dsn, "SELECT * FROM trade_history ORDER BY id")
    profiles = query(pg_dsn, "SELECT * FROM profiles ORDER BY id")
    results = run_scheduled_cycles(defs, instance)
    row = check(results, "acct1", "t-b6")
    assert (row["decision"], row["streak"]) == ("blocked", 1) and "dry run" in row["reason"]
    assert parity_requests(defs, instance)[0] == []
    assert query(pg_dsn, "SELECT * FROM trade_history ORDER BY id") == before
    assert query(pg_dsn, "SELECT * FROM profiles ORDER BY id") == profiles
    assert query(pg_dsn, "SELECT count(*) FROM recon.quarantine") == [(0,)]
    assert query(pg_dsn, "SELECT count(*), bool_and(dry_run) FROM recon.parity_checks") == [
        (len(heartbeat(results, "acct1")) + len(heartbeat(results, "acct2")), True)]

    off = make_defs(sim, pg_dsn, ReconSettings(enable_position_parity_heartbeat=False,
                                               position_parity_confirmations=1,
                                               position_parity_max_notional_pct=100.0))
    streaks = query(pg_dsn, "SELECT * FROM recon.parity_confirmations ORDER BY trade_id")
    checks = query(pg_dsn, "SELECT count(*) FROM recon.parity_checks")
    results = run_scheduled_cycles(off, instance)
    assert heartbeat(results, "acct1").empty
    mat = results["acct1"].asset_materializations_for_node("position_parity_heartbeat")[0]
    assert mat.metadata["enabled"].value is False
    assert query(pg_dsn, "SELECT count(*) FROM recon.parity_checks") == checks
    assert query(pg_dsn, "SELECT * FROM recon.parity_confirmations ORDER BY trade_id") == streaks
    assert parity_requests(off, instance)[0] == []
    assert query(pg_dsn, "SELECT * FROM trade_history ORDER BY id") == before


def test_an_exchange_briefly_reporting_no_position_pauses_the_account_and_closes_nothing(
        sim, pg_dsn, instance):
    """systemic_glitch: positionRisk comes back empty for every account. On acct1 the ghosts of
    alpha and beta, which no real fill explains, make the account systemic: every slice there is
    held (never confirmed towards a close) and both profiles are paused, whatever the notional
    and the confirmations; acct2's one profile is an ordinary ghost. When the positions come
    back, the slices are cleared."""
    defs = start(sim, pg_dsn, instance, "systemic_glitch", position_parity_confirmations=1)
    before = query(pg_dsn, "SELECT trade_id, status, exit_qty FROM trade_history ORDER BY trade_id")
    for _ in (1, 2):
        # The tripped watchdog's blocking check fails acct1's run (by design).
        results = run_scheduled_cycles(defs, instance, expect_success=False)
        frame = heartbeat(results, "acct1")
        assert frame["ghost"].all() and set(frame["decision"]) == {"held"}
        assert set(frame["streak"]) == {0}
        assert all(r.startswith("systemic") for r in frame["hold_reason"])
        mat = results["acct1"].asset_materializations_for_node("position_parity_heartbeat")[0]
        assert "alpha, beta" in mat.metadata["systemic"].value
        assert requests_for(parity_requests(defs, instance)[0], "alpha", "beta") == []
    assert dict(query(pg_dsn, "SELECT id, trading_state FROM profiles")) == {
        "alpha": "paused", "beta": "paused", "gamma": "active"}
    assert all("systemic" in reason for (reason,) in query(
        pg_dsn, "SELECT reason FROM recon.trading_gate_events WHERE action = 'watchdog_pause'"))
    assert query(pg_dsn, "SELECT count(*) FROM recon.alerts WHERE reason = 'systemic'")[0][0] >= 1
    assert query(pg_dsn, "SELECT trade_id, status, exit_qty FROM trade_history "
                         "WHERE profile_id IN ('alpha', 'beta') ORDER BY trade_id") == [
        r for r in before if r[0].startswith(("t-a", "t-b"))]
    sim.exchange.clear_faults()
    frame = heartbeat(run_scheduled_cycles(defs, instance, expect_success=False), "acct1")
    assert set(frame["decision"]) == {"cleared"}


def requests_for(requests, *profiles):
    return [r for r in requests if r.partition_key in profiles]


def test_a_retried_cycle_never_acts_on_its_first_attempts_decisions(sim, pg_dsn, instance):
    """closed_before_history, N=1: the first attempt of a cycle recorded a synthetic exit of
    t-b6 and its worker died before the parity job ran; the retry (same cycle, new snapshots)
    finds the decisions recorded by the first attempt, so the job launched from the retry acts
    on none of them: the next cycle decides again from its own snapshots."""
    defs = start(sim, pg_dsn, instance, "closed_before_history", position_parity_confirmations=1)
    first = run_scheduled_cycles(defs, instance)["acct1"]
    assert check({"acct1": first}, "acct1", "t-b6")["decision"] == "synthetic_exit"
    job = defs.resolve_job_def("reconciliation_cycle")
    retry = job.execute_in_process(instance=instance, partition_key="acct1", tags={
        "recon/account": "acct1", "dagster/root_run_id": first.run_id,
        "dagster/parent_run_id": first.run_id})
    assert retry.success
    mat = retry.asset_materializations_for_node("position_parity_heartbeat")[0]
    assert mat.metadata["decisions_recorded_by_run"].value == first.run_id
    (run,) = run_requests(defs, instance, "position_parity", [dg.RunRequest(
        partition_key="beta", run_config={"ops": {"apply_parity": {"config": {
            "profile_id": "beta", "cycle_id": first.run_id}}}})])
    assert run.success and run.output_for_node("apply_parity")["outcomes"] == []
    (output,) = [e for e in run.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    why = output.event_specific_data.metadata["not_applied"].value
    assert f"earlier attempt {first.run_id}" in why and retry.run_id in why
    assert slice_row(pg_dsn, "t-b6")[0] == "open"
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections WHERE handler = "
                         "'synthetic_exit'") == [(0,)]
