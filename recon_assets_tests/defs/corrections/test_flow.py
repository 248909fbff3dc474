"""Lifecycle corrections through the real automation path: schedule -> cycle job -> sensor ->
correction job, against the simulator (real ccxt over HTTP) and the real PostgreSQL."""

import datetime as dt
import os
import uuid

import dagster as dg
import psycopg
import pytest

from recon_assets.definitions import build_defs
from recon_assets.demo import local_resources
from recon_assets.defs.partitions import profile_partitions
from recon_assets.resources.alerts import AlertWebhook
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets.settings import ReconSettings
from recon_assets_tests.harness.dagster_flow import (WATCHDOG_OUT_OF_THE_WAY, add_partitions,
                                                     after_first_cycle,
                                                     diff_rows, evaluate_correction_sensor,
                                                     make_defs, query, run_corrections,
                                                     run_scheduled_cycles, running_run)
from recon_assets_tests.harness.exchange import FAST_RETRIES

pytestmark = pytest.mark.integration


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_schedule_sensor_and_job_correct_entry_exit_and_cancel(sim, pg_dsn, instance):
    plan = sim.load_scenario("lifecycle")
    plan.seed_database(pg_dsn)
    add_partitions(instance, plan)
    defs = make_defs(sim, pg_dsn)

    first = run_scheduled_cycles(defs, instance)
    assert sorted(first) == plan.accounts()
    missing = [r for r in diff_rows(first) if r["kind"] == "missing_from_exchange"]
    assert len(missing) == 3

    tick = evaluate_correction_sensor(defs, instance)
    cycle_id = first["acct1"].run_id
    expected_profiles = sorted({r["profile_id"] for r in missing})
    assert [r.run_key for r in tick.run_requests] == [f"{cycle_id}:{p}" for p in expected_profiles]
    assert all(r.tags["recon/profile"] in expected_profiles for r in tick.run_requests)
    assert tick.cursor is not None
    # The same materializations never launch corrections twice.
    again = evaluate_correction_sensor(defs, instance, cursor=tick.cursor)
    assert again.run_requests == [] and again.cursor == tick.cursor

    corrections = run_corrections(defs, instance, tick.run_requests)
    assert all(r.success for r in corrections)
    handlers = sorted(h for (h,) in query(pg_dsn, "SELECT handler FROM recon.corrections WHERE NOT dry_run"))
    assert handlers == ["reconcile_cancel", "reconcile_entry_fill", "reconcile_exit_fill"]

    second = run_scheduled_cycles(defs, instance)
    assert diff_rows(second) == [], "drift left after the corrections"
    # The capital ledger reserves exactly the open trades' virtual open qty at entry price.
    ledger = query(pg_dsn, """
        SELECT t.trade_id, (t.virtual_open_qty * t.entry_price)::float, l.reserved_usd::float
        FROM trade_history t FULL JOIN capital_ledger l ON l.trade_id = t.trade_id AND l.profile_id = t.profile_id
        WHERE t.status = 'open' OR l.trade_id IS NOT NULL""")
    assert ledger and all(want == pytest.approx(have) for _t, want, have in ledger)
    assert {s for (s,) in query(pg_dsn, "SELECT trading_state FROM profiles")} == {"active"}

    # Launching the corrections again (a re-run) changes nothing.
    before = query(pg_dsn, "SELECT count(*) FROM recon.corrections")
    run_corrections(defs, instance, tick.run_requests)
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections") == before


def test_network_error_during_the_probe_corrects_nothing(sim, pg_dsn, instance):
    defs = after_first_cycle(sim, pg_dsn, instance)
    before = query(pg_dsn, "SELECT client_order_id, status, filled_qty FROM orders ORDER BY 1")
    sim.exchange.inject_fault("drop", path="/fapi/v1/order", count=None)
    results = run_corrections(defs, instance, evaluate_correction_sensor(defs, instance).run_requests)
    assert results and all(r.success for r in results)
    outcomes = [o for r in results for o in r.output_for_node("correct_profile")["outcomes"]]
    assert outcomes and {o["reason"] for o in outcomes} == {"probe_network_error"}
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections") == [(0,)]
    assert query(pg_dsn, "SELECT client_order_id, status, filled_qty FROM orders ORDER BY 1") == before
    assert {s for (s,) in query(pg_dsn, "SELECT trading_state FROM profiles")} == {"active"}


def test_dry_run_records_every_decision_and_applies_nothing(sim, pg_dsn, instance):
    defs = after_first_cycle(sim, pg_dsn, instance, settings=ReconSettings(position_parity_dry_run=True, **WATCHDOG_OUT_OF_THE_WAY))
    before = query(pg_dsn, "SELECT client_order_id, status, filled_qty FROM orders ORDER BY 1")
    profiles_before = query(pg_dsn, "SELECT * FROM profiles ORDER BY id")
    results = run_corrections(defs, instance, evaluate_correction_sensor(defs, instance).run_requests)
    assert all(r.success for r in results)
    assert query(pg_dsn, "SELECT count(*), bool_and(dry_run) FROM recon.corrections") == [(3, True)]
    assert query(pg_dsn, "SELECT client_order_id, status, filled_qty FROM orders ORDER BY 1") == before
    # Not even the trading state was touched (updated_at included).
    assert query(pg_dsn, "SELECT * FROM profiles ORDER BY id") == profiles_before


def test_stale_cycle_blocks_corrections(sim, pg_dsn, instance):
    defs = after_first_cycle(sim, pg_dsn, instance, settings=ReconSettings(correction_max_cycle_age_seconds=0, **WATCHDOG_OUT_OF_THE_WAY))
    results = run_corrections(defs, instance, evaluate_correction_sensor(defs, instance).run_requests)
    assert results and not any(r.success for r in results)
    error = results[0].get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "stale" in error
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections") == [(0,)]


def test_lock_contention_is_recorded_and_escalated(sim, pg_dsn, instance):
    defs = after_first_cycle(sim, pg_dsn, instance, "cancelled_behind_db")
    requests = evaluate_correction_sensor(defs, instance).run_requests
    profile = requests[0].tags["recon/profile"]
    impatient_store = PostgresStore(dsn=pg_dsn, lock_timeout_ms=300)
    impatient = build_defs({**defs.resources, "database": impatient_store,
                            "io_manager": PostgresFrameIOManager(database=impatient_store)})
    # Another reconciler holds the profile's lock for the whole attempt.
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(recon_profile_lock_key(%s))", (profile,))
        results = run_corrections(impatient, instance, requests)
    assert not any(r.success for r in results)
    assert query(pg_dsn, "SELECT profile_id, lock_kind FROM recon.lock_contention") == [
        (profile, "reconciliation_lock")]
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections") == [(0,)]
    with dg.build_sensor_context(instance=instance, resources={
            "database": defs.resources["database"], "alert_webhook": AlertWebhook()}) as context:
        defs.get_sensor_def("escalation_sensor")(context)
    assert query(pg_dsn, "SELECT reason, profile_id FROM recon.alerts") == [("lock_contention", profile)]


def test_eight_concurrent_correction_runs_apply_each_correction_once(sim, pg_dsn, pg_server,
                                                                     instance, tmp_path):
    """Eight run workers (processes) correct one profile at once, as if the run queue's limit were
    gone. They share the deployment's Dagster run storage (Postgres), the database and the
    exchange. The first to take the reconciling gate corrects; a run that finds a live owner
    corrects nothing and fails saying so, or, once the owner is done, finds everything already
    applied. Each correction is applied once, and trading is active again at the end."""
    import json
    import subprocess
    import sys

    defs = after_first_cycle(sim, pg_dsn, instance)
    (request,) = evaluate_correction_sensor(defs, instance).run_requests
    storage = pg_server.create_database(f"dagster_{uuid.uuid4().hex[:8]}")
    url = storage.replace("postgresql://", "postgresql+psycopg2://")
    (tmp_path / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: \"{url}\"\ntelemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(tmp_path)) as shared:  # creates the storage schema
        shared.add_dynamic_partitions(profile_partitions.name, [request.partition_key])
    payload = json.dumps({"run_config": request.run_config, "tags": request.tags,
                          "partition_key": request.partition_key})
    workers = [subprocess.Popen(
        [sys.executable, "-m", "recon_assets_tests.harness.correction_worker", pg_dsn, sim.url,
         json.dumps(sim.credentials()), payload],
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)}, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True) for _ in range(8)]
    results = []
    try:
        for worker in workers:
            out, _ = worker.communicate(timeout=300)
            (line,) = [l for l in out.splitlines() if l.startswith("RESULT ")]
            results.append(json.loads(line.removeprefix("RESULT ")))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert any(r["success"] for r in results)
    for r in results:
        if not r["success"]:
            assert "is reconciling under run" in r["error"], r["error"]
    statuses = [o["status"] for r in results if r["success"] for o in r["outcomes"]]
    assert statuses.count("applied") == 3, statuses
    assert set(statuses) <= {"applied", "already_applied"}, statuses
    assert query(pg_dsn, """SELECT handler, outcome, count(*) FROM recon.corrections
                             WHERE NOT dry_run GROUP BY 1, 2 ORDER BY 1""") == [
        ("reconcile_cancel", "applied", 1), ("reconcile_entry_fill", "applied", 1),
        ("reconcile_exit_fill", "applied", 1)]
    assert query(pg_dsn, """SELECT client_order_id, status FROM orders
                             WHERE client_order_id IN ('rc.ALP.t-a3.E1', 'rc.ALP.t-a4.E1', 'rc.ALP.t-a5.X1')
                             ORDER BY 1""") == [
        ("rc.ALP.t-a3.E1", "filled"), ("rc.ALP.t-a4.E1", "canceled"), ("rc.ALP.t-a5.X1", "filled")]
    assert {s for (s,) in query(pg_dsn, "SELECT trading_state FROM profiles")} == {"active"}
    assert query(pg_dsn, "SELECT count(*) FROM recon.reconciling") == [(0,)]


def _escalate(defs, instance):
    with dg.build_sensor_context(instance=instance, resources={
            "database": defs.resources["database"], "alert_webhook": AlertWebhook()}) as context:
        defs.get_sensor_def("escalation_sensor")(context)


def test_one_failing_order_does_not_stop_the_others(sim, pg_dsn, instance):
    """Issue 10, sequence 2: alpha's entry fill of t-a3 is refused (the trade already has a slice
    of another profile); its cancel and its exit fill are corrected all the same, the refusal is
    recorded with its reason, and escalated."""
    defs = after_first_cycle(sim, pg_dsn, instance)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO trade_history (trade_id, profile_id, symbol, side, entry_qty, "
                     "entry_price) VALUES ('t-a3', 'beta', 'SOL/USDT:USDT', 'long', 1, 140)")
    results = run_corrections(defs, instance, evaluate_correction_sensor(defs, instance).run_requests)
    assert all(r.success for r in results)
    rows = query(pg_dsn, "SELECT client_order_id, handler, outcome, reason, idempotency_key IS NULL "
                          "FROM recon.corrections WHERE NOT dry_run ORDER BY client_order_id")
    assert rows[0][:3] == ("rc.ALP.t-a3.E1", "reconcile_entry_fill", "refused")
    assert rows[0][3] == "refused_by_handler" and rows[0][4] is True
    assert rows[1:] == [("rc.ALP.t-a4.E1", "reconcile_cancel", "applied", None, False),
                        ("rc.ALP.t-a5.X1", "reconcile_exit_fill", "applied", None, False)]
    (evidence,) = query(pg_dsn, "SELECT evidence->>'error' FROM recon.corrections "
                                 "WHERE outcome = 'refused'")
    assert "has slices of profile beta" in evidence[0]
    assert query(pg_dsn, "SELECT status FROM orders WHERE client_order_id = 'rc.ALP.t-a3.E1'") == [
        ("open",)]
    _escalate(defs, instance)
    assert ("correction_refused", "alpha") in query(
        pg_dsn, "SELECT reason, profile_id FROM recon.alerts")
    assert {s for (s,) in query(pg_dsn, "SELECT trading_state FROM profiles")} == {"active"}


def test_a_failed_correction_run_is_escalated(sim, pg_dsn, instance):
    defs = after_first_cycle(sim, pg_dsn, instance,
                             settings=ReconSettings(correction_max_cycle_age_seconds=0, **WATCHDOG_OUT_OF_THE_WAY))
    results = run_corrections(defs, instance, evaluate_correction_sensor(defs, instance).run_requests)
    assert results and not any(r.success for r in results)
    sensor = defs.get_sensor_def("failed_correction_run_sensor")
    for result in results:
        with dg.build_run_status_sensor_context(
                sensor_name=sensor.name, dagster_instance=instance,
                dagster_run=result.dagster_run,
                dagster_event=result.get_run_failure_event(),
                resources={"database": defs.resources["database"],
                           "alert_webhook": AlertWebhook()}).for_run_failure() as context:
            sensor(context)
    alerts = query(pg_dsn, "SELECT reason, profile_id, summary FROM recon.alerts")
    assert [(a[0], a[1]) for a in alerts] == [("failed_correction_run", "alpha")]
    assert "stale" in alerts[0][2]


def test_a_profile_left_reconciling_by_a_killed_run_is_restored_by_the_next_cycle(sim, pg_dsn,
                                                                                 instance):
    """Issue 10, sequence 3: a correction run was killed after recon_begin_reconciling, and the
    next cycle finds nothing to correct: the cycle itself restores trading and reports it."""
    plan = sim.load_scenario("clean")
    plan.seed_database(pg_dsn)
    add_partitions(instance, plan)
    store = PostgresStore(dsn=pg_dsn)
    store.call("recon_begin_reconciling", {"p_profile_id": "alpha", "p_cycle_id": "killed-run"})
    # beta's owner is a correction run that is still running: it is left alone.
    live = running_run(instance, "lifecycle_correction", {"recon/profile": "beta"})
    store.call("recon_begin_reconciling", {"p_profile_id": "beta", "p_cycle_id": live.run_id})
    defs = make_defs(sim, pg_dsn)
    results = run_scheduled_cycles(defs, instance)
    assert query(pg_dsn, "SELECT id, trading_state FROM profiles ORDER BY id") == [
        ("alpha", "active"), ("beta", "reconciling"), ("gamma", "active")]
    assert query(pg_dsn, "SELECT profile_id, cycle_id FROM recon.reconciling") == [
        ("beta", live.run_id)]
    assert query(pg_dsn, "SELECT reason, profile_id FROM recon.alerts") == [
        ("stale_reconciling", "alpha")]
    gate = results["acct1"].asset_materializations_for_node("cycle_start")[0]
    assert gate.metadata["restored_profiles"].value == 1
    assert "alpha" in gate.metadata["gate"].value and "killed-run" in gate.metadata["gate"].value


def test_a_correction_launched_by_hand_carries_the_profile_tag(sim, pg_dsn, instance):
    """Issue 10, sequence 4 (Dagster side): the job is partitioned by profile, so a launch from
    the Launchpad (a partition, no hand-written tags) carries the per-profile concurrency tag,
    and it corrects from the profile's latest cycle."""
    defs = after_first_cycle(sim, pg_dsn, instance)
    job = defs.resolve_job_def("lifecycle_correction")
    result = job.execute_in_process(partition_key="alpha", instance=instance)
    assert result.success
    assert result.dagster_run.tags["recon/profile"] == "alpha"
    assert len(result.output_for_node("correct_profile")["outcomes"]) == 3


def test_a_second_run_does_not_correct_while_a_live_run_owns_the_profile(sim, pg_dsn, instance):
    """Issue 10, sequence 4: overlapping runs. The first run owns the reconciling gate; the
    second corrects nothing, cannot end the gate, and says whose it is."""
    defs = after_first_cycle(sim, pg_dsn, instance)
    owner = running_run(instance, "lifecycle_correction", {"recon/profile": "alpha"})
    PostgresStore(dsn=pg_dsn).call("recon_begin_reconciling",
                                   {"p_profile_id": "alpha", "p_cycle_id": owner.run_id})
    (result,) = run_corrections(defs, instance,
                                evaluate_correction_sensor(defs, instance).run_requests)
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert owner.run_id in error and "reconciling" in error
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections") == [(0,)]
    assert query(pg_dsn, "SELECT trading_state FROM profiles WHERE id = 'alpha'") == [
        ("reconciling",)]
    assert query(pg_dsn, "SELECT cycle_id FROM recon.reconciling") == [(owner.run_id,)]


def test_a_row_lock_of_the_trading_app_is_not_reconciliation_lock_contention(sim, pg_dsn,
                                                                            instance):
    """Issue 10, sequence 7: the trading app holds the order's row lock; the lock timeout is
    recorded as a row lock on orders, and the alert says so."""
    defs = after_first_cycle(sim, pg_dsn, instance, "cancelled_behind_db")
    requests = evaluate_correction_sensor(defs, instance).run_requests
    impatient_store = PostgresStore(dsn=pg_dsn, lock_timeout_ms=300)
    impatient = build_defs({**defs.resources, "database": impatient_store,
                            "io_manager": PostgresFrameIOManager(database=impatient_store)})
    with psycopg.connect(pg_dsn) as holder:
        holder.execute("SELECT 1 FROM orders WHERE client_order_id = 'rc.ALP.t-a4.E1' FOR UPDATE")
        results = run_corrections(impatient, instance, requests)
        holder.rollback()
    assert not any(r.success for r in results)
    assert query(pg_dsn, "SELECT profile_id, lock_kind, lock_object FROM recon.lock_contention") == [
        ("alpha", "row_lock", "orders")]
    _escalate(defs, instance)
    ((reason, summary),) = query(pg_dsn, "SELECT reason, summary FROM recon.alerts")
    assert reason == "lock_contention"
    assert "row lock on orders" in summary and "reconciliation lock" not in summary
    assert {s for (s,) in query(pg_dsn, "SELECT trading_state FROM profiles")} == {"active"}


def _db_order(dsn, coid, trade, intent, side, qty, price, exchange_order_id):
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id, "
            "exchange_order_id, status, qty, price, created_at, updated_at) VALUES ('alpha', %s, "
            "%s, 'SOL/USDT:USDT', %s, %s, %s, 'open', %s, %s, now() - interval '1 minute', "
            "now() - interval '1 minute')",
            (trade, intent, side, coid, exchange_order_id, qty, price))


def _filled_behind_the_db(sim, dsn, coid, trade, intent, side, qty, price, at_ms=None):
    """The trading app placed and recorded the order; the exchange filled it unseen."""
    order = sim.exchange.place_order("acct1", "SOLUSDT", side.upper(), "LIMIT", qty, price,
                                     client_order_id=coid, at_ms=at_ms)
    _db_order(dsn, coid, trade, intent, side, qty, price, str(order.order_id))
    return sim.exchange.fill_order("acct1", order.order_id, at_ms=at_ms)


def _cycle_and_correct(defs, instance):
    run_scheduled_cycles(defs, instance)
    results = run_corrections(defs, instance, evaluate_correction_sensor(defs, instance).run_requests)
    assert results and all(r.success for r in results)


def test_a_fee_paid_in_bnb_is_booked_at_its_price_at_fill_time(sim, pg_dsn, instance):
    """Issue 10, sequence 6: the account pays its commissions in BNB. Each fee keeps its asset
    and amount, its USD value is the BNB price of the fill's minute (the close of its 1-minute
    candle), not the price now, and the slice's realised PnL is net of the entry and exit fees."""
    plan = sim.load_scenario("clean")
    plan.seed_database(pg_dsn)
    add_partitions(instance, plan)
    defs = make_defs(sim, pg_dsn)
    sim.exchange.set_fee_asset("acct1", "BNB")
    minute = 60_000
    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000) // minute * minute
    sim.exchange.set_mark_price("BNBUSDT", "600", at_ms=now - 5 * minute)
    entry = _filled_behind_the_db(sim, pg_dsn, "rc.ALP.t-f1.E1", "t-f1", "ENTRY", "buy", "10",
                                  "140.0000", at_ms=now - 4 * minute + 1_000)
    sim.exchange.set_mark_price("BNBUSDT", "650", at_ms=now - 3 * minute)
    exit_ = _filled_behind_the_db(sim, pg_dsn, "rc.ALP.t-f1.X1", "t-f1", "EXIT", "sell", "10",
                                  "160.0000", at_ms=now - 2 * minute + 1_000)
    sim.exchange.set_mark_price("BNBUSDT", "700")  # later moves of BNB change nothing booked
    _cycle_and_correct(defs, instance)
    fees = query(pg_dsn, "SELECT client_order_id, fee_asset, fee_amount, fee_usd FROM applied_fills "
                          "WHERE trade_id = 't-f1' ORDER BY client_order_id")
    assert fees == [("rc.ALP.t-f1.E1", "BNB", entry.commission, entry.commission * 600),
                    ("rc.ALP.t-f1.X1", "BNB", exit_.commission, exit_.commission * 650)]
    ((pnl, status),) = query(pg_dsn, "SELECT realised_pnl_usd, status FROM trade_history "
                                      "WHERE trade_id = 't-f1'")
    assert status == "closed"
    assert pnl == 10 * (160 - 140) - entry.commission * 600 - exit_.commission * 650
    # The exchange snapshot's fills keep the fee as charged, with the same conversion.
    stored = query(pg_dsn, "SELECT fee_asset, fee_amount, fee_usd FROM recon.exchange_fills "
                            "WHERE exchange_order_id = %s", (str(exit_.order_id),))
    assert stored == [("BNB", exit_.commission, exit_.commission * 650)]


def test_a_fee_in_an_asset_without_a_price_is_unknown_not_zero(sim, pg_dsn, instance):
    plan = sim.load_scenario("clean")
    plan.seed_database(pg_dsn)
    add_partitions(instance, plan)
    defs = make_defs(sim, pg_dsn)
    sim.exchange.set_fee_asset("acct1", "XYZ")  # no XYZUSDT market: no price to convert at
    entry = _filled_behind_the_db(sim, pg_dsn, "rc.ALP.t-f2.E1", "t-f2", "ENTRY", "buy", "10",
                                  "140.0000")
    _cycle_and_correct(defs, instance)
    assert query(pg_dsn, "SELECT fee_asset, fee_amount, fee_usd FROM applied_fills "
                          "WHERE client_order_id = 'rc.ALP.t-f2.E1'") == [
        ("XYZ", entry.commission, None)]
    # Issue item 9: the slice's realised PnL is unknown too, not 0 (migration 0019).
    assert query(pg_dsn, "SELECT realised_pnl_usd, pnl_unknown_reason FROM trade_history "
                         "WHERE trade_id = 't-f2'") == [(None, "fee_unpriced")]
    (evidence,) = query(pg_dsn, "SELECT evidence->'change'->>'unpriced_fees' FROM recon.corrections "
                                 "WHERE client_order_id = 'rc.ALP.t-f2.E1'")
    assert evidence == ("1",)


def test_a_stop_order_triggered_behind_the_database_is_found_by_the_probe_and_booked(
        sim, pg_dsn, instance):
    """Issue 15: a conditional order lives on the Algo Service (its id an algoId); once
    triggered, its fill belongs to the regular order it became. The probe follows it there."""
    defs = after_first_cycle(sim, pg_dsn, instance, "conditional_orders")
    tick = evaluate_correction_sensor(defs, instance)
    assert [r.tags["recon/profile"] for r in tick.run_requests] == ["gamma"]
    assert all(r.success for r in run_corrections(defs, instance, tick.run_requests))
    rows = query(pg_dsn, "SELECT handler, outcome FROM recon.corrections WHERE NOT dry_run")
    assert rows == [("reconcile_exit_fill", "applied")]
    assert query(pg_dsn, "SELECT status, filled_qty::text FROM orders "
                         "WHERE client_order_id = 'rc.GAM.t-g1.X2'") == [("filled", "0.002")]
    assert query(pg_dsn, "SELECT status FROM trade_history WHERE trade_id = 't-g1'") == [("closed",)]
    # The resting stop of beta stays open on both sides: nothing to correct, nothing found.
    assert diff_rows(run_scheduled_cycles(defs, instance)) == []


def test_a_hedge_mode_account_is_reconciled_leg_by_leg(sim, pg_dsn, instance):
    """Issue 15: acct3 in hedge mode, a long leg (delta) and a short leg (epsilon) on BTC.
    epsilon's EXIT filled behind the database: found on the short leg (a net comparison of the
    two legs would hide it), booked by reconcileExitFill; the long leg is untouched, and the
    next cycle finds nothing. Before, the snapshot refused a hedge-mode account outright."""
    defs = after_first_cycle(sim, pg_dsn, instance, "hedge_mode")
    tick = evaluate_correction_sensor(defs, instance)
    assert [r.tags["recon/profile"] for r in tick.run_requests] == ["epsilon"]
    assert all(r.success for r in run_corrections(defs, instance, tick.run_requests))
    assert query(pg_dsn, "SELECT handler, outcome FROM recon.corrections WHERE NOT dry_run") == [
        ("reconcile_exit_fill", "applied")]
    acct3 = "profile_id IN ('delta', 'epsilon')"
    assert query(pg_dsn, f"SELECT trade_id, status FROM trade_history WHERE {acct3} "
                         "ORDER BY trade_id") == [("t-d1", "open"), ("t-e1", "closed")]
    assert query(pg_dsn, f"SELECT profile_id, side, qty::text FROM positions WHERE {acct3} "
                         "ORDER BY profile_id") == [("delta", "long", "0.010")]
    assert diff_rows(run_scheduled_cycles(defs, instance)) == []


DAY_MS = 86_400_000


def _old_order(sim, dsn, trade_id, created_days_ago, qty="0.010", price="59000.0"):
    """An alpha ENTRY on acct1 placed `created_days_ago` days ago, recorded open in the DB."""
    from recon_assets.core.attribution import make_client_order_id
    from recon_assets.simulator.state import now_ms

    cid = make_client_order_id("ALP", trade_id, "ENTRY")
    at = now_ms() - created_days_ago * DAY_MS
    order = sim.exchange.place_order("acct1", "XRPUSDT", "BUY", "LIMIT", "100.0", "0.5000",
                                     client_order_id=cid, at_ms=at)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id, "
            "exchange_order_id, status, qty, filled_qty, price, created_at, updated_at) VALUES "
            "('alpha', %s, 'ENTRY', 'XRP/USDT:USDT', 'buy', %s, %s, 'open', 100, 0, 0.5, "
            "to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0))",
            (trade_id, cid, str(order.order_id), at, at))
    return order, at


def _corrections(dsn):
    return query(dsn, "SELECT client_order_id, handler, outcome FROM recon.corrections "
                      "WHERE NOT dry_run ORDER BY client_order_id")


def test_an_old_orders_fills_are_looked_up_in_its_own_time_range(sim, pg_dsn, instance):
    """Issue 15: userTrades without a time range answers for the last 7 days only; an order
    filled 9 days ago is found with its fills by passing the order's time range."""
    plan = sim.load_scenario("clean")
    plan.seed_database(pg_dsn)
    order, at = _old_order(sim, pg_dsn, "t-old", created_days_ago=10)
    sim.exchange.fill_order("acct1", order.order_id, at_ms=at + DAY_MS)
    add_partitions(instance, plan)
    defs = make_defs(sim, pg_dsn)
    run_scheduled_cycles(defs, instance)
    tick = evaluate_correction_sensor(defs, instance)
    assert all(r.success for r in run_corrections(defs, instance, tick.run_requests))
    assert _corrections(pg_dsn) == [("rc.ALP.t-old.E1", "reconcile_entry_fill", "applied")]
    assert query(pg_dsn, "SELECT status FROM orders WHERE trade_id = 't-old'") == [("filled",)]


def test_an_order_beyond_the_exchanges_query_retention_gets_its_own_reason_and_no_action(
        sim, pg_dsn, instance):
    """Binance forgets an order cancelled without fills after 3 days, any order after 90 days:
    "not found" then says nothing about the order; the operator is told why, nothing is done."""
    plan = sim.load_scenario("clean")
    plan.seed_database(pg_dsn)
    cancelled, at = _old_order(sim, pg_dsn, "t-gone", created_days_ago=5)
    sim.exchange.cancel_order("acct1", cancelled.order_id, at_ms=at + 60_000)
    ancient, at = _old_order(sim, pg_dsn, "t-ancient", created_days_ago=100)
    sim.exchange.fill_order("acct1", ancient.order_id, at_ms=at + 60_000)
    add_partitions(instance, plan)
    defs = make_defs(sim, pg_dsn)
    run_scheduled_cycles(defs, instance)
    tick = evaluate_correction_sensor(defs, instance)
    results = run_corrections(defs, instance, tick.run_requests)
    outcomes = [o for r in results for o in r.output_for_node("correct_profile")["outcomes"]]
    reasons = {o["client_order_id"]: o["reason"] for o in outcomes}
    assert reasons == {"rc.ALP.t-ancient.E1": "beyond_exchange_query_retention",
                       "rc.ALP.t-gone.E1": "beyond_exchange_query_retention"}
    assert query(pg_dsn, "SELECT DISTINCT status FROM orders WHERE trade_id IN "
                         "('t-gone', 't-ancient')") == [("open",)]


def test_a_profile_whose_corrections_keep_being_refused_backs_off(sim, pg_dsn, instance):
    """Issue 38: a profile whose lifecycle corrections the database keeps refusing is not
    retried (and alerted) every cycle. One refusal: tried again at the next cycle. Two in a
    row: it waits a minute after the last, three: two minutes (`retry_after_refusals`); another
    profile's refusals are its own; an applied correction of it ends the run."""
    plan = sim.load_scenario("lifecycle")
    plan.seed_database(pg_dsn)
    add_partitions(instance, plan)
    defs = make_defs(sim, pg_dsn)
    run_scheduled_cycles(defs, instance)
    everyone = [r.partition_key for r in evaluate_correction_sensor(defs, instance).run_requests]
    assert everyone == ["alpha"]

    def record(outcome, seconds_ago, profile="alpha"):
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, "
                "outcome, reason, applied_at) VALUES (%s, 'c-earlier', %s, "
                "'reconcile_exit_fill', %s, %s, now() - make_interval(secs => %s))",
                (f"k-{uuid.uuid4()}" if outcome == "applied" else None, profile, outcome,
                 None if outcome == "applied" else "exit_exceeds_open_qty", seconds_ago))

    def launched():
        return [r.partition_key for r in evaluate_correction_sensor(defs, instance).run_requests]

    for _ in range(3):  # another profile's refusals are its own
        record("refused", 0, profile="beta")
    assert launched() == everyone
    record("refused", 300)
    assert launched() == everyone  # one refusal: the next cycle tries again
    record("refused", 61)
    assert launched() == everyone  # two: a minute after the last, which has passed
    record("refused", 0)
    assert launched() == []  # three: two minutes after the last
    record("applied", 0)
    assert launched() == everyone  # an applied correction ends the run of refusals


def test_an_account_s_order_probes_per_cycle_are_capped_and_the_rest_wait(sim, pg_dsn, instance):
    """Issue 39: one account with many orders missing from the exchange must not spend the
    IP's weight. With a cap of 2 order probes per account and cycle, the lifecycle scenario's
    three missing orders (one profile) get two probes and corrections; the third is reported
    deferred, probed by no one, and corrected after the next cycle."""
    plan = sim.load_scenario("lifecycle")
    plan.seed_database(pg_dsn)
    add_partitions(instance, plan)
    defs = build_defs(local_resources(pg_dsn, sim, ReconSettings(**WATCHDOG_OUT_OF_THE_WAY),
                                      max_attempts=2, max_correction_probes=2, **FAST_RETRIES))
    first = run_scheduled_cycles(defs, instance)
    missing = [r for r in diff_rows(first) if r["kind"] == "missing_from_exchange"]
    assert len(missing) == 3 and len({r["profile_id"] for r in missing}) == 1
    sim.exchange.reset_request_counts()
    tick = evaluate_correction_sensor(defs, instance)
    (run,) = run_corrections(defs, instance, tick.run_requests)
    assert run.success
    probed = sim.exchange.reset_request_counts().get("GET /fapi/v1/order", 0)
    assert probed == 2
    outcomes = run.output_for_node("correct_profile")["outcomes"]
    assert sorted(o["status"] for o in outcomes) == ["applied", "applied", "deferred"]
    (deferred,) = [o for o in outcomes if o["status"] == "deferred"]
    assert deferred["reason"] == "probe_cap"
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections WHERE NOT dry_run") == [(2,)]
    assert query(pg_dsn, "SELECT exchange_account, used FROM recon.order_probe_budgets") == [
        ("acct1", 2)]
    # The next cycle finds the third order missing again, and its corrections probe it.
    second = run_scheduled_cycles(defs, instance)
    assert [r["client_order_id"] for r in diff_rows(second)
            if r["kind"] == "missing_from_exchange"] == [deferred["client_order_id"]]
    (again,) = run_corrections(defs, instance, evaluate_correction_sensor(
        defs, instance, cursor=tick.cursor).run_requests)
    assert [(o["client_order_id"], o["status"])
            for o in again.output_for_node("correct_profile")["outcomes"]] == [
        (deferred["client_order_id"], "applied")]
    assert diff_rows(run_scheduled_cycles(defs, instance)) == []
