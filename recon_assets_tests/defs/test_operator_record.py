"""Issue 38: every operator job records its launch where the UI cannot erase it: the job, the run
id, the `dagster/user` tag when present, and the whole run config, before it acts."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from recon_assets_tests.defs.parity.test_watchdog import gate, start
from recon_assets_tests.harness.dagster_flow import query

pytestmark = pytest.mark.integration


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def actions(dsn):
    return query(dsn, "SELECT job, run_id, dagster_user, config FROM recon.operator_actions "
                      "ORDER BY id")


def test_a_pause_and_a_resume_are_recorded_with_their_config_run_and_user(sim, pg_dsn, instance):
    defs = start(sim, pg_dsn, instance)
    runs = []
    for job, user in (("pause_profile", "ops@example.com"), ("resume_profile", None)):
        config = {"ops": {f"{job}_op": {"config": {"profile_id": "beta",
                                                    "reason": f"{job} by hand"}}}}
        result = defs.resolve_job_def(job).execute_in_process(
            run_config=config, instance=instance,
            tags={"dagster/user": user} if user else None)
        assert result.success
        runs.append((job, result.run_id, user, config))
    assert actions(pg_dsn) == runs
    assert gate(pg_dsn, "beta") == ("active", None)
    # Append-only: nobody rewrites the record, not even the owner.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in ("UPDATE recon.operator_actions SET dagster_user = 'someone else'",
                          "DELETE FROM recon.operator_actions"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
    assert actions(pg_dsn) == runs


def test_an_operator_action_that_fails_is_recorded_too(sim, pg_dsn, instance):
    """A resume without a reason is refused by the job, after its launch was recorded."""
    defs = start(sim, pg_dsn, instance)
    config = {"ops": {"resume_profile_op": {"config": {"profile_id": "beta", "reason": " "}}}}
    result = defs.resolve_job_def("resume_profile").execute_in_process(
        run_config=config, instance=instance, raise_on_error=False)
    assert not result.success
    assert actions(pg_dsn) == [("resume_profile", result.run_id, None, config)]
