"""Which cycle a run is (defs/runs.py): its own id, or for a retry its first run's."""

import dagster as dg
import pytest

from recon_assets.defs.reconciliation.definitions import reconciliation_cycle_job
from recon_assets.defs.runs import ROOT_RUN_ID_TAG, cycle_id_of, cycle_id_of_run, started_runs

pytestmark = pytest.mark.integration


def test_a_first_run_is_its_own_cycle_and_a_retry_is_its_first_runs():
    first = dg.DagsterRun(job_name="reconciliation_cycle", run_id="r1")
    retry = dg.DagsterRun(job_name="reconciliation_cycle", run_id="r2", parent_run_id="r1",
                          root_run_id="r1")
    # As Dagster tags a re-execution, when the run's fields are not set (execute_in_process).
    tagged = dg.DagsterRun(job_name="reconciliation_cycle", run_id="r3",
                           tags={ROOT_RUN_ID_TAG: "r1"})
    assert [cycle_id_of(r) for r in (first, retry, tagged)] == ["r1", "r1", "r1"]


def test_the_cycle_job_is_retried_from_its_first_step():
    assert reconciliation_cycle_job.tags["dagster/retry_strategy"] == "ALL_STEPS"


def test_the_history_has_one_entry_per_cycle_with_its_first_start():
    with dg.instance_for_test() as instance:
        tags = {"dagster/partition": "acct1"}
        killed = dg.DagsterRun(job_name="reconciliation_cycle", run_id="a" * 8, tags=tags,
                               status=dg.DagsterRunStatus.FAILURE)
        retry = dg.DagsterRun(job_name="reconciliation_cycle", run_id="b" * 8,
                              tags={**tags, ROOT_RUN_ID_TAG: "a" * 8},
                              status=dg.DagsterRunStatus.STARTED)
        other = dg.DagsterRun(job_name="reconciliation_cycle", run_id="c" * 8, tags=tags,
                              status=dg.DagsterRunStatus.SUCCESS)
        for run in (other, killed, retry):
            instance.add_run(run)
        history = started_runs(instance, "reconciliation_cycle", "acct1")
        assert sorted((cycle, status) for cycle, status, _ in history) == [
            ("a" * 8, "STARTED"), ("c" * 8, "SUCCESS")]
        assert cycle_id_of_run(instance, "b" * 8) == "a" * 8
        assert cycle_id_of_run(instance, "unknown") == "unknown"
