"""The EXIT backfill through the real automation path: the scheduled cycle (candidates decided
before the heartbeat), the exit_backfill sensor and job, the operators' approve / reject jobs,
against the simulator (real ccxt over HTTP) and the real PostgreSQL.

Books that no named scenario holds are built here with the scenario builder on both sides
(`book`): the trading app's trades in sync, then exits the database never saw."""

from decimal import Decimal

import dagster as dg
import psycopg
import pytest

from recon_assets.settings import ReconSettings
from recon_assets.simulator.scenarios import Scenario, ScenarioBuilder, _accounts
from recon_assets_tests.harness.dagster_flow import (WATCHDOG_OUT_OF_THE_WAY, add_partitions,
                                                     evaluate_sensor, make_defs, query,
                                                     run_requests, run_scheduled_cycles)

pytestmark = pytest.mark.integration
HEURISTICS = {"exit_backfill_allow_heuristic_match": True,
              "exit_backfill_require_strong_attribution": False}


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def settings(**flags):
    return ReconSettings(**{**WATCHDOG_OUT_OF_THE_WAY, **flags})


def book(sim, dsn, instance, build):
    """A book of our own on both sides: the three profiles, then `build(builder)`."""
    sim.exchange.reset()
    b = ScenarioBuilder(sim.exchange)
    _accounts(b)
    build(b)
    sim.exchange.check_consistency()
    plan = Scenario("custom", "", b.expected, b.rows())
    plan.seed_database(dsn)
    add_partitions(instance, plan)
    return plan


def scenario(sim, dsn, instance, name):
    plan = sim.load_scenario(name)
    plan.seed_database(dsn)
    add_partitions(instance, plan)
    return plan


def candidates(results, account):
    return results[account].output_for_node("exit_backfill_candidates")


def decision(results, account, trade):
    frame = candidates(results, account)
    (row,) = frame[frame["trade_id"] == trade].to_dict("records")
    return row


def heartbeat_decision(results, account, trade):
    frame = results[account].output_for_node("position_parity_heartbeat")
    return frame[frame["trade_id"] == trade]["decision"].tolist()


def backfill_requests(defs, instance, cursor=None):
    tick = evaluate_sensor(defs, instance, "exit_backfill_sensor", cursor)
    return tick.run_requests, tick.cursor


def slice_of(dsn, trade):
    return query(dsn, "SELECT status, entry_qty, exit_qty, virtual_open_qty, exit_price, "
                      "realised_pnl_usd, close_reason FROM trade_history WHERE trade_id = %s",
                 (trade,))[0]


def books_are_whole(dsn, profile):
    """Each position is the signed sum of its booked fills; the ledger is its recalculation."""
    for symbol, position, fills in query(dsn, """
            SELECT f.symbol, COALESCE((SELECT CASE p.side WHEN 'long' THEN p.qty ELSE -p.qty END
                                       FROM positions p WHERE p.profile_id = f.profile_id
                                         AND p.symbol = f.symbol), 0),
                   sum(CASE f.side WHEN 'buy' THEN f.qty ELSE -f.qty END)
            FROM applied_fills f WHERE f.profile_id = %s GROUP BY f.profile_id, f.symbol""",
                                         (profile,)):
        assert position == fills, symbol
    ledger = dict(query(dsn, "SELECT trade_id, reserved_usd FROM capital_ledger WHERE profile_id = %s",
                        (profile,)))
    scratch = dict(query(dsn, "SELECT trade_id, round(sum(virtual_open_qty * entry_price), 2) "
                              "FROM trade_history WHERE profile_id = %s AND status = 'open' "
                              "GROUP BY trade_id", (profile,)))
    assert ledger == scratch


def booked_fill(dsn, row):
    return query(dsn, "SELECT count(*), min(price), min(fee_usd), min(trade_id) FROM applied_fills "
                      "WHERE exchange_fill_id = %s AND symbol = %s",
                 (row["exchange_fill_id"], row["symbol"]))[0]


def test_a_lost_exit_order_s_fill_is_backfilled_at_its_real_price_and_fee_exactly_once(
        sim, pg_dsn, instance):
    """exit_order_lost: gamma's EXIT (rc.GAM.t-g3.X1) filled 20 LINK at 15.2; the database never
    recorded the order, so only the fill proves the exit."""
    scenario(sim, pg_dsn, instance, "exit_order_lost")
    defs = make_defs(sim, pg_dsn)
    results = run_scheduled_cycles(defs, instance)
    row = decision(results, "acct2", "t-g3")
    assert (row["decision"], row["match_mode"], row["profile_id"]) == ("GO", "client_order_id", "gamma")
    assert row["client_order_id"] == "rc.GAM.t-g3.X1"
    # Evidence first: the heartbeat leaves the ghost to the backfill.
    assert heartbeat_decision(results, "acct2", "t-g3") == ["backfill"]
    materialization = results["acct2"].asset_materializations_for_node("exit_backfill_candidates")[0]
    assert materialization.metadata["decision/GO"].value == 1
    assert "rc.GAM.t-g3.X1" in materialization.metadata["decisions"].value

    requests, cursor = backfill_requests(defs, instance)
    assert [(r.partition_key, r.run_config["ops"]["apply_exit_backfill"]["config"]["cycle_id"])
            for r in requests] == [("gamma", results["acct2"].run_id)]
    (run,) = run_requests(defs, instance, "exit_backfill", requests)
    assert run.success
    fee = query(pg_dsn, "SELECT fee_usd FROM recon.exchange_fills WHERE exchange_fill_id = %s "
                        "AND symbol = %s", (row["exchange_fill_id"], row["symbol"]))[0][0]
    assert fee > 0
    assert slice_of(pg_dsn, "t-g3") == ("closed", 20, 20, 0, Decimal("15.2"),
                                        Decimal("8.0") - fee, "exit_fill_backfilled")
    assert booked_fill(pg_dsn, row) == (1, Decimal("15.2"), fee, "t-g3")
    assert query(pg_dsn, "SELECT count(*) FROM positions WHERE profile_id = 'gamma' "
                         "AND symbol = 'LINK/USDT:USDT'") == [(0,)]
    books_are_whole(pg_dsn, "gamma")
    (key,) = query(pg_dsn, "SELECT evidence->'input'->>'match_mode' FROM recon.corrections "
                           "WHERE handler = 'exit_backfill'")
    assert key == ("client_order_id",)

    # A re-run of the same request books nothing twice.
    (again,) = run_requests(defs, instance, "exit_backfill", requests)
    assert again.success
    assert again.output_for_node("apply_exit_backfill")["outcomes"][0]["status"] == "already_applied"
    assert booked_fill(pg_dsn, row)[0] == 1
    # The next cycle: the fill is booked, the slice closed; nothing is left to decide or launch.
    results = run_scheduled_cycles(defs, instance)
    assert candidates(results, "acct2").empty
    assert not [r for r in backfill_requests(defs, instance, cursor)[0]]


def test_b_s_tagged_partial_exit_goes_to_b_only_and_a_killed_run_s_rerun_books_nothing_twice(
        sim, pg_dsn, instance):
    """alpha and beta are both long 1,000 ADA on acct1. Beta's bot sold 300 and then 100 of its
    own (rc.BET.t-b40.X1, .X2) and crashed before recording either: beta's slice keeps 600
    open, alpha's is untouched. A first run booked the first fill and was killed."""
    def build(b):
        b.trade("alpha", "t-a40", "ADAUSDT", "BUY", "1000", "0.40000")
        b.trade("beta", "t-b40", "ADAUSDT", "BUY", "1000", "0.41000")
        for seq, qty in ((1, "300"), (2, "100")):
            b.ex.place_order("acct1", "ADAUSDT", "SELL", "MARKET", qty,
                             client_order_id=f"rc.BET.t-b40.X{seq}", at_ms=b.tick())

    book(sim, pg_dsn, instance, build)
    defs = make_defs(sim, pg_dsn)
    results = run_scheduled_cycles(defs, instance)
    frame = candidates(results, "acct1")
    assert frame["decision"].tolist() == ["GO", "GO"]
    assert set(frame["profile_id"]) == {"beta"} and set(frame["trade_id"]) == {"t-b40"}
    first = frame.iloc[0].to_dict()
    # The killed run: it took beta's gate, booked the first fill, and died.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT recon_begin_reconciling('beta', 'killed-run')")
        (decision_id,) = conn.execute(
            "SELECT id FROM recon.backfill_decisions WHERE exchange_fill_id = %s AND decision = "
            "'GO' ORDER BY id DESC LIMIT 1", (first["exchange_fill_id"],)).fetchone()
        conn.execute("SELECT recon_exit_backfill(p_profile_id => 'beta', p_cycle_id => 'killed-run', "
                     "p_idempotency_key => %s, p_trade_id => 't-b40', p_slice_no => 1, "
                     "p_symbol => 'ADA/USDT:USDT', p_exchange_fill_id => %s, "
                     "p_decision_id => %s)",
                     (first["idempotency_key"], first["exchange_fill_id"], decision_id))
    requests, _ = backfill_requests(defs, instance)
    (run,) = run_requests(defs, instance, "exit_backfill", requests)
    assert run.success
    statuses = [o["status"] for o in run.output_for_node("apply_exit_backfill")["outcomes"]]
    assert statuses == ["already_applied", "applied"]
    assert slice_of(pg_dsn, "t-b40")[:4] == ("open", 1000, 400, 600)
    assert slice_of(pg_dsn, "t-a40")[:4] == ("open", 1000, 0, 1000)
    assert query(pg_dsn, "SELECT profile_id, qty FROM positions WHERE symbol = 'ADA/USDT:USDT' "
                         "ORDER BY profile_id") == [("alpha", 1000), ("beta", 600)]
    assert query(pg_dsn, "SELECT count(*), count(DISTINCT exchange_fill_id) FROM applied_fills "
                         "WHERE trade_id = 't-b40' AND side = 'sell'") == [(2, 2)]
    assert query(pg_dsn, "SELECT trading_state FROM profiles WHERE id = 'beta'") == [("active",)]
    books_are_whole(pg_dsn, "beta")
    # What the exchange holds now agrees: the next cycle has nothing for the backfill.
    assert candidates(run_scheduled_cycles(defs, instance), "acct1").empty


def test_a_fill_10_minutes_before_the_slice_opened_is_rejected_3_minutes_is_accepted(
        sim, pg_dsn, instance):
    """alpha's XRP slice and beta's DOGE slice each have an attributed sell on the exchange from
    before they opened: 10 minutes before (beyond the 5-minute grace) and 3 minutes before."""
    def build(b):
        for profile, trade, symbol, qty, before in (("alpha", "t-a50", "XRPUSDT", "1000.0", 10),
                                                    ("beta", "t-b50", "DOGEUSDT", "5000", 3)):
            b.trade(profile, trade, symbol, "BUY", qty, "0.5000" if symbol == "XRPUSDT" else "0.140000")
            opened = b.clock
            tag = b.profiles[profile]["sub_tag"]
            b.ex.place_order("acct1", symbol, "SELL", "MARKET", str(int(float(qty)) // 2),
                             client_order_id=f"rc.{tag}.{trade}.X1",
                             at_ms=opened - before * 60_000)

    book(sim, pg_dsn, instance, build)
    results = run_scheduled_cycles(make_defs(sim, pg_dsn), instance)
    stale = decision(results, "acct1", "t-a50")
    assert stale["decision"] == "NO_GO" and "stale evidence" in stale["reason"]
    assert "10.0 min before" in stale["reason"] and not stale["assignable"]
    assert decision(results, "acct1", "t-b50")["decision"] == "GO"


def test_heuristic_matches_are_no_go_by_default_and_go_when_allowed(sim, pg_dsn, instance):
    """beta's only ADA slice was closed from the web UI (single_open_trade); on DOGE, alpha holds
    3,000 and beta 5,000, and a web-UI sell of 3,000 matches only alpha's qty (qty_unique)."""
    def build(b):
        b.trade("beta", "t-b60", "ADAUSDT", "BUY", "2000", "0.42000")
        b.trade("alpha", "t-a60", "DOGEUSDT", "BUY", "3000", "0.140000")
        b.trade("beta", "t-b61", "DOGEUSDT", "BUY", "5000", "0.141000")
        b.ex.close_position("acct1", "ADAUSDT", client_order_id="web_close1", at_ms=b.tick())
        b.ex.place_order("acct1", "DOGEUSDT", "SELL", "MARKET", "3000",
                         client_order_id="web_sell1", at_ms=b.tick())

    book(sim, pg_dsn, instance, build)
    results = run_scheduled_cycles(make_defs(sim, pg_dsn), instance)
    single, unique = decision(results, "acct1", "t-b60"), decision(results, "acct1", "t-a60")
    assert (single["decision"], single["match_mode"]) == ("NO_GO", "single_open_trade")
    assert (unique["decision"], unique["match_mode"]) == ("NO_GO", "qty_unique")
    assert "ALLOW_HEURISTIC_MATCH is false" in single["reason"]
    defs = make_defs(sim, pg_dsn, settings(**HEURISTICS))
    assert not backfill_requests(defs, instance)[0]  # nothing GO yet
    results = run_scheduled_cycles(defs, instance)
    assert [decision(results, "acct1", t)["decision"] for t in ("t-b60", "t-a60")] == ["GO", "GO"]
    requests, _ = backfill_requests(defs, instance)
    assert sorted(r.partition_key for r in requests) == ["alpha", "beta"]
    assert all(r.success for r in run_requests(defs, instance, "exit_backfill", requests))
    assert slice_of(pg_dsn, "t-b60")[0] == slice_of(pg_dsn, "t-a60")[0] == "closed"
    assert slice_of(pg_dsn, "t-b61")[:4] == ("open", 5000, 0, 5000)
    books_are_whole(pg_dsn, "alpha")
    books_are_whole(pg_dsn, "beta")


def review(defs, instance, job, decision_id, note):
    return defs.resolve_job_def(job).execute_in_process(
        run_config={"ops": {f"{job}_op": {"config": {"decision_id": decision_id, "note": note}}}},
        instance=instance, raise_on_error=False)


def decision_id(dsn, cycle_id, trade):
    return query(dsn, "SELECT id FROM recon.backfill_decisions WHERE cycle_id = %s AND trade_id = %s",
                 (cycle_id, trade))[0][0]


def test_an_operator_rejects_then_approves_a_no_go_and_the_approval_books_it(sim, pg_dsn, instance):
    """closed_manually: beta's ADA closed from the web UI; the heuristic's NO_GO waits for an
    operator. A rejection keeps it NO_GO in later cycles; an approval books the real fill."""
    scenario(sim, pg_dsn, instance, "closed_manually")
    defs = make_defs(sim, pg_dsn)
    results = run_scheduled_cycles(defs, instance)
    first = decision_id(pg_dsn, results["acct1"].run_id, "t-b5")
    rejected = review(defs, instance, "reject_backfill", first, "checking with the desk")
    assert rejected.success
    results = run_scheduled_cycles(defs, instance)
    row = decision(results, "acct1", "t-b5")
    assert row["decision"] == "NO_GO" and "rejected by an operator" in row["reason"]
    assert "checking with the desk" in row["reason"]
    # Without a note nothing is recorded.
    assert not review(defs, instance, "approve_backfill", first, " ").success
    approved = review(defs, instance, "approve_backfill",
                      decision_id(pg_dsn, results["acct1"].run_id, "t-b5"),
                      "the desk closed it from the web UI")
    assert approved.success
    assert slice_of(pg_dsn, "t-b5")[0] == "closed"
    assert slice_of(pg_dsn, "t-b5")[6] == "exit_fill_backfilled"
    assert query(pg_dsn, "SELECT verdict, note FROM recon.backfill_reviews ORDER BY id") == [
        ("reject", "checking with the desk"), ("approve", "the desk closed it from the web UI")]
    books_are_whole(pg_dsn, "beta")
    # The slice is closed and its fill booked: the next cycle has nothing to review.
    assert candidates(run_scheduled_cycles(defs, instance), "acct1").empty
