"""The automation path as the daemon drives it, for tests: the schedule's cycles, sensors
evaluated against the instance, the jobs they request executed in process."""

import datetime as dt
import uuid

import dagster as dg
import psycopg

from recon_assets.definitions import build_defs
from recon_assets.demo import local_resources
from recon_assets.defs.partitions import exchange_account_partitions, profile_partitions
from recon_assets.settings import ReconSettings
from recon_assets_tests.harness.exchange import FAST_RETRIES


# Tests of the other rules keep the integrity watchdog's threshold out of the way (100 % of
# capital): a tripped watchdog pauses profiles and, by design, fails the cycle's run (its check
# is blocking). The watchdog's own tests (defs/parity/test_watchdog.py) pass their settings.
WATCHDOG_OUT_OF_THE_WAY = {"position_parity_max_notional_pct": 100.0}


def make_defs(sim, dsn, settings=None):
    settings = settings or ReconSettings(**WATCHDOG_OUT_OF_THE_WAY)
    return build_defs(local_resources(dsn, sim, settings, max_attempts=2,
                                      **FAST_RETRIES))


def add_partitions(instance, plan):
    """The dynamic partitions the partitions sensor keeps: accounts and profiles."""
    instance.add_dynamic_partitions(exchange_account_partitions.name, plan.accounts())
    instance.add_dynamic_partitions(profile_partitions.name,
                                    sorted(p["id"] for p in plan.db["profiles"]))


def after_first_cycle(sim, dsn, instance, scenario="lifecycle", settings=None):
    """Load a scenario on both sides and run the scheduled cycle once; returns the definitions."""
    plan = sim.load_scenario(scenario)
    plan.seed_database(dsn)
    add_partitions(instance, plan)
    defs = make_defs(sim, dsn, settings)
    run_scheduled_cycles(defs, instance)
    return defs


def run_scheduled_cycles(defs, instance, expect_success=True):
    """Evaluate the schedule like the daemon does and execute every run it requests."""
    schedule = defs.get_schedule_def("reconciliation_cycle_schedule")
    with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=dt.datetime.now(dt.timezone.utc),
            repository_def=defs.get_repository_def(),
            resources={"settings": defs.resources["settings"]}) as context:
        tick = schedule.evaluate_tick(context)
    job = defs.resolve_job_def("reconciliation_cycle")
    results = {}
    for request in tick.run_requests:
        result = job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                        tags=request.tags, raise_on_error=False)
        if expect_success:
            assert result.success
        results[request.partition_key] = result
    return results


def evaluate_sensor(defs, instance, name, cursor=None):
    sensor = defs.get_sensor_def(name)
    # The instance ref lets the sensor's partitioned run requests be checked against the
    # instance's dynamic partitions, as the daemon does.
    with dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), cursor=cursor,
                                 definitions=defs,
                                 resources={"database": defs.resources["database"]}) as context:
        return sensor.evaluate_tick(context)


def evaluate_correction_sensor(defs, instance, cursor=None):
    return evaluate_sensor(defs, instance, "lifecycle_correction_sensor", cursor)


def run_requests(defs, instance, job_name, requests):
    job = defs.resolve_job_def(job_name)
    return [job.execute_in_process(run_config=r.run_config, instance=instance, tags=r.tags,
                                   partition_key=r.partition_key, raise_on_error=False)
            for r in requests]


def run_corrections(defs, instance, requests):
    return run_requests(defs, instance, "lifecycle_correction", requests)


def diff_rows(results):
    return [row for r in results.values() for row in r.output_for_node("reconciliation_diff").to_dict("records")]


def query(dsn, sql, params=()):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def running_run(instance, job_name, tags):
    """A run the instance reports as running (as a run worker that is alive would be)."""
    run = dg.DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()),
                        status=dg.DagsterRunStatus.STARTED, tags=tags)
    instance.add_run(run)
    return run
