"""The shard run (RECON_CYCLE_SHARD_SIZE > 1): several accounts' cycles in one run's process,
each its own reconciliation_cycle run, isolated from the others; the shard schedule; a cycle
orphaned by a dead shard does not hold its account back. Real PostgreSQL, the simulator over
ccxt, real Dagster execution."""

import datetime as dt
import json
import uuid

import dagster as dg
import psycopg
import pytest

from recon_assets.definitions import build_defs
from recon_assets.demo import local_resources
from recon_assets.defs.runs import SHARD_OP, SHARD_RUN_TAG
from recon_assets.resources.exchange import ExchangeResource
from recon_assets.settings import ReconSettings
from recon_assets_tests.harness.dagster_flow import (WATCHDOG_OUT_OF_THE_WAY, add_partitions,
                                                     evaluate_correction_sensor)
from recon_assets_tests.harness.exchange import FAST_RETRIES

pytestmark = pytest.mark.integration
SHARDED = ReconSettings(**WATCHDOG_OUT_OF_THE_WAY, cycle_shard_size=2)


def sharded_defs(sim, dsn, credentials=None):
    resources = local_resources(dsn, sim, SHARDED, max_attempts=2, **FAST_RETRIES)
    if credentials is not None:
        resources["exchange"] = ExchangeResource(credentials=json.dumps(credentials),
                                                 api_base_url=sim.url, max_attempts=2,
                                                 **FAST_RETRIES)
    return build_defs(resources)


def tick(defs, instance, name):
    with dg.build_schedule_context(
            instance=instance, repository_def=defs.get_repository_def(),
            resources={"settings": defs.resources["settings"]},
            scheduled_execution_time=dt.datetime(2026, 12, 3, tzinfo=dt.timezone.utc)) as context:
        return defs.get_schedule_def(name).evaluate_tick(context)


def run_shard(defs, instance, accounts):
    return defs.resolve_job_def("reconciliation_shard").execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={"ops": {SHARD_OP: {"config": {"accounts": accounts}}}})


def cycle_runs(instance, shard_run_id):
    runs = instance.get_runs(dg.RunsFilter(job_name="reconciliation_cycle",
                                           tags={SHARD_RUN_TAG: shard_run_id}))
    return {r.tags["dagster/partition"]: r for r in runs}


@pytest.fixture
def lifecycle(sim, pg_dsn):
    """The lifecycle scenario on both sides and an instance with its partitions."""
    plan = sim.load_scenario("lifecycle")
    plan.seed_database(pg_dsn)
    with dg.instance_for_test() as instance:
        add_partitions(instance, plan)
        yield plan, instance


def test_one_account_failing_does_not_stop_the_shard_and_is_that_accounts_failed_cycle(
        sim, pg_dsn, lifecycle):
    _plan, instance = lifecycle
    creds = sim.credentials()
    creds["acct1"]["secret"] = "not-the-secret-5678"  # acct1's exchange rejects its key
    defs = sharded_defs(sim, pg_dsn, creds)
    shard = run_shard(defs, instance, ["acct1", "acct2"])
    # The shard is red, naming the account; the other account's cycle ran after it.
    assert not shard.success
    failure = next(e for e in shard.all_events if e.is_step_failure)
    assert "1 of 2 cycles of this shard failed: acct1" in failure.step_failure_data.error.message
    runs = cycle_runs(instance, shard.run_id)
    assert sorted(runs) == ["acct1", "acct2"]
    assert runs["acct1"].status == dg.DagsterRunStatus.FAILURE
    assert runs["acct2"].status == dg.DagsterRunStatus.SUCCESS
    assert "not-the-secret-5678" not in json.dumps(
        [str(e.message) for e in instance.all_logs(runs["acct1"].run_id)])
    # The good account's cycle is a cycle like any other: recorded under its own run id,
    # and its findings drive the correction sensor.
    with psycopg.connect(pg_dsn) as conn:
        cycles = conn.execute("SELECT cycle_id, exchange_account, status FROM recon.cycles "
                              "ORDER BY exchange_account").fetchall()
    assert (runs["acct2"].run_id, "acct2", "succeeded") in cycles
    assert not [c for c in cycles if c[1] == "acct1" and c[2] == "succeeded"]
    requests = evaluate_correction_sensor(defs, instance).run_requests
    assert {r.tags["recon/cycle"] for r in requests} <= {runs["acct2"].run_id}


def test_a_shard_reconciles_every_account_like_runs_of_their_own(sim, pg_dsn, lifecycle):
    plan, instance = lifecycle
    defs = sharded_defs(sim, pg_dsn)
    shard = run_shard(defs, instance, plan.accounts())
    assert shard.success
    metadata = shard.get_step_success_events()[0]  # the op's step
    assert metadata.step_key == SHARD_OP
    outputs = [e for e in shard.all_events if e.is_successful_output]
    assert outputs[0].step_output_data.metadata["status/success"].value == len(plan.accounts())
    runs = cycle_runs(instance, shard.run_id)
    assert sorted(runs) == sorted(plan.accounts())
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs.values())
    # Each account's diff is materialized by its own cycle run, for its partition.
    for account, run in runs.items():
        record = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("reconciliation_diff"), asset_partitions=[account]),
            limit=1).records[0]
        assert record.run_id == run.run_id
    requests = evaluate_correction_sensor(defs, instance).run_requests
    assert requests and {r.tags["recon/cycle"] for r in requests} <= {
        r.run_id for r in runs.values()}


def test_a_cycle_orphaned_by_a_dead_shard_is_canceled_by_the_accounts_next_cycle(sim, pg_dsn, lifecycle):
    plan, instance = lifecycle
    defs = sharded_defs(sim, pg_dsn)
    # A shard whose process was killed mid-cycle: the shard run failed (run monitoring),
    # its cycle of acct1 still shows STARTED, and nothing will ever finish it.
    dead = instance.add_run(dg.DagsterRun(job_name="reconciliation_shard",
                                          run_id=str(uuid.uuid4()),
                                          status=dg.DagsterRunStatus.FAILURE))
    orphan = instance.add_run(dg.DagsterRun(
        job_name="reconciliation_cycle", run_id=str(uuid.uuid4()),
        status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": "acct1", SHARD_RUN_TAG: dead.run_id}))
    # The schedule does not wait for it ...
    ticked = tick(defs, instance, "reconciliation_shard_schedule")
    assert [r.run_config["ops"][SHARD_OP]["config"]["accounts"]
            for r in ticked.run_requests] == [["acct1", "acct2"]]
    # ... and the next cycle of acct1 is not refused as overlapping: it ends the orphan.
    shard = run_shard(defs, instance, ["acct1"])
    assert shard.success
    assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.CANCELED
    # A cycle whose shard is alive is running: it still holds its account back.
    alive = instance.add_run(dg.DagsterRun(job_name="reconciliation_shard",
                                           run_id=str(uuid.uuid4()),
                                           status=dg.DagsterRunStatus.STARTED))
    instance.add_run(dg.DagsterRun(
        job_name="reconciliation_cycle", run_id=str(uuid.uuid4()),
        status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": "acct2", SHARD_RUN_TAG: alive.run_id}))
    blocked = run_shard(defs, instance, ["acct2"])
    assert not blocked.success
    assert cycle_runs(instance, blocked.run_id)["acct2"].status == dg.DagsterRunStatus.FAILURE
