"""The cycle schedule requests one cycle per account and tick, and none for an account whose
previous cycle is still queued or running (no pile-up behind a slow or stuck cycle)."""

import datetime as dt
import uuid

import dagster as dg
import pytest

from recon_assets.definitions import defs as load_defs
from recon_assets.defs.partitions import exchange_account_partitions

pytestmark = pytest.mark.unit
DEFS = load_defs()


def tick(instance):
    return DEFS.get_schedule_def("reconciliation_cycle_schedule").evaluate_tick(
        dg.build_schedule_context(
            instance=instance, repository_def=DEFS.get_repository_def(),
            scheduled_execution_time=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)))


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
