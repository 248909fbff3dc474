"""failed_cycle_sensor records a cycle that failed (the loop is unhealthy) and not a cycle that
was interrupted from outside (a demo or daemon stopped, a worker restarted): a restart is not an
incident."""

import dagster as dg
import psycopg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType, JobFailureData, RunFailureReason

from recon_assets.defs.reconciliation.definitions import failed_cycle_sensor
from recon_assets.resources.database import PostgresStore

pytestmark = pytest.mark.db


def _failed(instance, store, reason):
    run = instance.add_run(dg.DagsterRun(job_name="reconciliation_cycle", run_id=f"run-{reason.value}",
                                         status=dg.DagsterRunStatus.FAILURE,
                                         tags={"dagster/partition": "acct1"}))
    event = DagsterEvent(event_type_value=DagsterEventType.RUN_FAILURE.value,
                         job_name="reconciliation_cycle",
                         message='Execution of run for "reconciliation_cycle" failed.',
                         event_specific_data=JobFailureData(error=None, failure_reason=reason))
    with dg.build_run_status_sensor_context(
            sensor_name=failed_cycle_sensor.name, dagster_instance=instance, dagster_run=run,
            dagster_event=event, resources={"database": store}).for_run_failure() as context:
        failed_cycle_sensor(context)
    return run.run_id


def test_a_failed_cycle_is_recorded_and_an_interrupted_one_is_not(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    with dg.instance_for_test() as instance:
        interrupted = _failed(instance, store, RunFailureReason.UNEXPECTED_TERMINATION)
        failed = _failed(instance, store, RunFailureReason.STEP_FAILURE)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT cycle_id, status FROM recon.cycles ORDER BY cycle_id").fetchall()
    assert rows == [(failed, "failed")]
    assert interrupted not in {r[0] for r in rows}
