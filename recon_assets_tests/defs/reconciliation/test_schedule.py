"""The cycle schedule requests one cycle per account and tick, and none for an account whose
previous cycle is still queued or running (no pile-up behind a slow or stuck cycle)."""

import datetime as dt
import uuid

import dagster as dg
import pytest

from recon_assets.definitions import defs as load_defs
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.defs.runs import SHARD_OP, SHARD_RUN_TAG
from recon_assets.settings import ReconSettings

pytestmark = pytest.mark.unit
DEFS = load_defs()


def tick(instance, name="reconciliation_cycle_schedule", settings=None):
    # As a context manager: the schedule's resources (settings) are torn down after the tick.
    with dg.build_schedule_context(
            instance=instance, repository_def=DEFS.get_repository_def(),
            resources={"settings": settings or DEFS.resources["settings"]},
            scheduled_execution_time=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)) as context:
        return DEFS.get_schedule_def(name).evaluate_tick(context)


def cycle_run(instance, account, status):
    instance.add_run(dg.DagsterRun(job_name="reconciliation_cycle", run_id=str(uuid.uuid4()),
                                   status=status, tags={"dagster/partition": account}))


def test_one_request_per_account_and_none_behind_a_queued_or_running_cycle():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["acct1", "acct2", "acct3"])
        first = tick(instance)
        assert [(r.partition_key, r.tags["recon/account"]) for r in first.run_requests] == [
            ("acct1", "acct1"), ("acct2", "acct2"), ("acct3", "acct3")]
        cycle_run(instance, "acct1", dg.DagsterRunStatus.NOT_STARTED)  # created, not yet launched
        cycle_run(instance, "acct2", dg.DagsterRunStatus.STARTED)
        cycle_run(instance, "acct3", dg.DagsterRunStatus.FAILURE)  # over: does not hold it back
        assert [r.partition_key for r in tick(instance).run_requests] == ["acct3"]
        cycle_run(instance, "acct3", dg.DagsterRunStatus.STARTING)
        skipped = tick(instance)
        assert skipped.run_requests == [] and "still queued or running" in skipped.skip_message


def measured(instance, account, weight, egress="default"):
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key="exchange_positions", partition=account,
        metadata={"request_weight": weight, "egress": egress, "egress_weight_limit": 2400}))


def test_cycles_that_would_not_fit_their_egress_budget_wait_for_the_next_tick():
    """Three accounts whose last cycles weighed 1000 each share one IP (2400 a minute, 30 %
    left free): one cycle a tick, the longest waiting first; another egress is not held back."""
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name,
                                        ["acct1", "acct2", "acct3", "acct4"])
        for account in ("acct1", "acct2", "acct3"):
            measured(instance, account, 1000)
        measured(instance, "acct4", 1000, egress="ip-b")
        first = tick(instance)
        assert [r.partition_key for r in first.run_requests] == ["acct1", "acct4"]
        measured(instance, "acct1", 1000)  # its cycle ran: now the most recent
        measured(instance, "acct4", 1000, egress="ip-b")
        assert [r.partition_key for r in tick(instance).run_requests] == ["acct2", "acct4"]
        measured(instance, "acct2", 1000)
        assert [r.partition_key for r in tick(instance).run_requests][0] == "acct3"


SHARDS_OF_2 = ReconSettings(cycle_shard_size=2)


def shards(result):
    return [r.run_config["ops"][SHARD_OP]["config"]["accounts"] for r in result.run_requests]


def test_with_a_shard_size_the_accounts_are_cut_into_shard_runs_and_a_held_one_waits():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name,
                                        ["acct1", "acct2", "acct3"])
        # One mode at a time: the per-account schedule stands aside, and the other way round.
        assert "reconciliation_shard_schedule" in tick(instance, settings=SHARDS_OF_2).skip_message
        assert "RECON_CYCLE_SHARD_SIZE=1" in tick(instance, "reconciliation_shard_schedule").skip_message
        first = tick(instance, "reconciliation_shard_schedule", SHARDS_OF_2)
        assert shards(first) == [["acct1", "acct2"], ["acct3"]]
        assert [r.tags["recon/shard_size"] for r in first.run_requests] == ["2", "1"]
        # A shard not yet launched holds its accounts; so does a per-account cycle running.
        instance.add_run(dg.DagsterRun(
            job_name="reconciliation_shard", run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.NOT_STARTED,
            run_config={"ops": {SHARD_OP: {"config": {"accounts": ["acct1"]}}}}))
        cycle_run(instance, "acct3", dg.DagsterRunStatus.STARTED)
        assert shards(tick(instance, "reconciliation_shard_schedule", SHARDS_OF_2)) == [["acct2"]]


def test_a_cycle_whose_shard_run_is_over_does_not_hold_its_account():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["acct1"])
        shard = instance.add_run(dg.DagsterRun(job_name="reconciliation_shard",
                                               run_id=str(uuid.uuid4()),
                                               status=dg.DagsterRunStatus.STARTED))
        instance.add_run(dg.DagsterRun(job_name="reconciliation_cycle", run_id=str(uuid.uuid4()),
                                       status=dg.DagsterRunStatus.STARTED,
                                       tags={"dagster/partition": "acct1",
                                             SHARD_RUN_TAG: shard.run_id}))
        assert tick(instance).run_requests == []  # its shard is alive: the cycle is running
        instance.report_run_failed(shard, "its pod was lost")
        assert [r.partition_key for r in tick(instance).run_requests] == ["acct1"]
