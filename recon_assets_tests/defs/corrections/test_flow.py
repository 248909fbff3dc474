"""Lifecycle corrections through the real automation path: schedule -> cycle job -> sensor ->
correction job, against the simulator (real ccxt over HTTP) and the real PostgreSQL."""

import datetime as dt

import dagster as dg
import psycopg
import pytest

from recon_assets.definitions import build_defs
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.alerts import AlertWebhook
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets.settings import ReconSettings
from recon_assets.demo import local_resources
from recon_assets_tests.harness.exchange import FAST_RETRIES

pytestmark = pytest.mark.integration


def make_defs(sim, dsn, settings=None):
    return build_defs(local_resources(dsn, sim, settings or ReconSettings(), max_attempts=2,
                                      **FAST_RETRIES))


def after_first_cycle(sim, dsn, instance, scenario="lifecycle", settings=None):
    """Load a scenario on both sides and run the scheduled cycle once; returns the definitions."""
    plan = sim.load_scenario(scenario)
    plan.seed_database(dsn)
    instance.add_dynamic_partitions(exchange_account_partitions.name, plan.accounts())
    defs = make_defs(sim, dsn, settings)
    run_scheduled_cycles(defs, instance)
    return defs


def run_scheduled_cycles(defs, instance):
    """Evaluate the schedule like the daemon does and execute every run it requests."""
    schedule = defs.get_schedule_def("reconciliation_cycle_schedule")
    tick = schedule.evaluate_tick(dg.build_schedule_context(
        instance=instance, scheduled_execution_time=dt.datetime.now(dt.timezone.utc),
        repository_def=defs.get_repository_def()))
    job = defs.resolve_job_def("reconciliation_cycle")
    results = {}
    for request in tick.run_requests:
        result = job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                        tags=request.tags)
        assert result.success
        results[request.partition_key] = result
    return results


def evaluate_correction_sensor(defs, instance, cursor=None):
    sensor = defs.get_sensor_def("lifecycle_correction_sensor")
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                 resources={"database": defs.resources["database"]}) as context:
        return sensor.evaluate_tick(context)


def run_corrections(defs, instance, requests):
    job = defs.resolve_job_def("lifecycle_correction")
    return [job.execute_in_process(run_config=r.run_config, instance=instance, tags=r.tags,
                                   raise_on_error=False) for r in requests]


def diff_rows(results):
    return [row for r in results.values() for row in r.output_for_node("reconciliation_diff").to_dict("records")]


def _query(dsn, sql, params=()):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_schedule_sensor_and_job_correct_entry_exit_and_cancel(sim, pg_dsn, instance):
    plan = sim.load_scenario("lifecycle")
    plan.seed_database(pg_dsn)
    instance.add_dynamic_partitions(exchange_account_partitions.name, plan.accounts())
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
    handlers = sorted(h for (h,) in _query(pg_dsn, "SELECT handler FROM recon.corrections WHERE NOT dry_run"))
    assert handlers == ["reconcile_cancel", "reconcile_entry_fill", "reconcile_exit_fill"]

    second = run_scheduled_cycles(defs, instance)
    assert diff_rows(second) == [], "drift left after the corrections"
    # The capital ledger reserves exactly the open trades' virtual open qty at entry price.
    ledger = _query(pg_dsn, """
        SELECT t.trade_id, (t.virtual_open_qty * t.entry_price)::float, l.reserved_usd::float
        FROM trade_history t FULL JOIN capital_ledger l ON l.trade_id = t.trade_id AND l.profile_id = t.profile_id
        WHERE t.status = 'open' OR l.trade_id IS NOT NULL""")
    assert ledger and all(want == pytest.approx(have) for _t, want, have in ledger)
    assert {s for (s,) in _query(pg_dsn, "SELECT trading_state FROM profiles")} == {"active"}

    # Launching the corrections again (a re-run) changes nothing.
    before = _query(pg_dsn, "SELECT count(*) FROM recon.corrections")
    run_corrections(defs, instance, tick.run_requests)
    assert _query(pg_dsn, "SELECT count(*) FROM recon.corrections") == before


def test_network_error_during_the_probe_corrects_nothing(sim, pg_dsn, instance):
    defs = after_first_cycle(sim, pg_dsn, instance)
    before = _query(pg_dsn, "SELECT client_order_id, status, filled_qty FROM orders ORDER BY 1")
    sim.exchange.inject_fault("drop", path="/fapi/v1/order", count=None)
    results = run_corrections(defs, instance, evaluate_correction_sensor(defs, instance).run_requests)
    assert results and all(r.success for r in results)
    outcomes = [o for r in results for o in r.output_for_node("correct_profile")["outcomes"]]
    assert outcomes and {o["reason"] for o in outcomes} == {"probe_network_error"}
    assert _query(pg_dsn, "SELECT count(*) FROM recon.corrections") == [(0,)]
    assert _query(pg_dsn, "SELECT client_order_id, status, filled_qty FROM orders ORDER BY 1") == before
    assert {s for (s,) in _query(pg_dsn, "SELECT trading_state FROM profiles")} == {"active"}


def test_dry_run_records_every_decision_and_applies_nothing(sim, pg_dsn, instance):
    defs = after_first_cycle(sim, pg_dsn, instance, settings=ReconSettings(position_parity_dry_run=True))
    before = _query(pg_dsn, "SELECT client_order_id, status, filled_qty FROM orders ORDER BY 1")
    profiles_before = _query(pg_dsn, "SELECT * FROM profiles ORDER BY id")
    results = run_corrections(defs, instance, evaluate_correction_sensor(defs, instance).run_requests)
    assert all(r.success for r in results)
    assert _query(pg_dsn, "SELECT count(*), bool_and(dry_run) FROM recon.corrections") == [(3, True)]
    assert _query(pg_dsn, "SELECT client_order_id, status, filled_qty FROM orders ORDER BY 1") == before
    # Not even the trading state was touched (updated_at included).
    assert _query(pg_dsn, "SELECT * FROM profiles ORDER BY id") == profiles_before


def test_stale_cycle_blocks_corrections(sim, pg_dsn, instance):
    defs = after_first_cycle(sim, pg_dsn, instance, settings=ReconSettings(correction_max_cycle_age_seconds=0))
    results = run_corrections(defs, instance, evaluate_correction_sensor(defs, instance).run_requests)
    assert results and not any(r.success for r in results)
    error = results[0].get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "stale" in error
    assert _query(pg_dsn, "SELECT count(*) FROM recon.corrections") == [(0,)]


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
    assert _query(pg_dsn, "SELECT profile_id FROM recon.lock_contention") == [(profile,)]
    assert _query(pg_dsn, "SELECT count(*) FROM recon.corrections") == [(0,)]
    with dg.build_sensor_context(instance=instance, resources={
            "database": defs.resources["database"], "alert_webhook": AlertWebhook()}) as context:
        defs.get_sensor_def("escalation_sensor")(context)
    assert _query(pg_dsn, "SELECT reason, profile_id FROM recon.alerts") == [("lock_contention", profile)]


def test_eight_concurrent_correction_runs_apply_each_correction_once(sim, pg_dsn, instance):
    defs = after_first_cycle(sim, pg_dsn, instance)
    (request,) = evaluate_correction_sensor(defs, instance).run_requests
    job = defs.resolve_job_def("lifecycle_correction")

    def one_run(_):
        # Each run in its own instance, as separate run workers would be; they share only the
        # database (and its reconciliation lock) and the exchange.
        with dg.DagsterInstance.ephemeral() as own:
            return job.execute_in_process(run_config=request.run_config, instance=own,
                                          tags=request.tags, raise_on_error=False)

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one_run, range(8)))
    assert all(r.success for r in results)
    statuses = [o["status"] for r in results for o in r.output_for_node("correct_profile")["outcomes"]]
    assert statuses.count("applied") == 3, statuses
    assert _query(pg_dsn, """SELECT handler, count(*) FROM recon.corrections WHERE NOT dry_run
                             GROUP BY 1 ORDER BY 1""") == [
        ("reconcile_cancel", 1), ("reconcile_entry_fill", 1), ("reconcile_exit_fill", 1)]
    assert _query(pg_dsn, """SELECT client_order_id, status FROM orders
                             WHERE client_order_id IN ('rc.ALP.t-a3.E1', 'rc.ALP.t-a4.E1', 'rc.ALP.t-a5.X1')
                             ORDER BY 1""") == [
        ("rc.ALP.t-a3.E1", "filled"), ("rc.ALP.t-a4.E1", "canceled"), ("rc.ALP.t-a5.X1", "filled")]
    assert {s for (s,) in _query(pg_dsn, "SELECT trading_state FROM profiles")} == {"active"}
