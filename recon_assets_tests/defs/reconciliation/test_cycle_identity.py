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


def test_a_cycle_run_past_its_deadline_is_failed_by_run_monitoring(monkeypatch):
    """Issue 38: one account cannot hold its cycle slot for ever. The cycle job's runs carry
    `dagster/max_runtime`; Dagster's run monitoring (enabled in every deployment's instance)
    leaves a run alone before the deadline and fails it after. The monitoring daemon's check
    runs here on a real instance; only its clock is moved past the deadline."""
    import logging

    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._daemon.monitoring import run_monitoring

    from recon_assets.core.rules import CYCLE_DEADLINE_SECONDS

    assert reconciliation_cycle_job.tags["dagster/max_runtime"] == str(CYCLE_DEADLINE_SECONDS)
    with dg.instance_for_test() as instance:
        run = dg.DagsterRun(job_name="reconciliation_cycle", run_id="d" * 8,
                            tags=dict(reconciliation_cycle_job.tags),
                            status=dg.DagsterRunStatus.STARTING)
        instance.add_run(run)
        instance.report_dagster_event(DagsterEvent(
            event_type_value=DagsterEventType.RUN_START.value, job_name=run.job_name), run.run_id)
        record = instance.get_run_record_by_id(run.run_id)
        log = logging.getLogger("run_monitoring")
        run_monitoring.check_run_timeout(instance, record, log, 0)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        now = run_monitoring.get_current_timestamp
        monkeypatch.setattr(run_monitoring, "get_current_timestamp",
                            lambda: now() + CYCLE_DEADLINE_SECONDS + 1)
        run_monitoring.check_run_timeout(instance, record, log, 0)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE


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
