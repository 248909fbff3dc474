"""Issue 38's Launchpad attacks, as a UI user would launch them (real Dagster execution against
the simulator and the harness's Postgres): a run config that reads the environment or rebinds a
deployment's resource is refused before anything is read, sent or written, and the refusal names
the config path, never the value."""

from __future__ import annotations

import dagster as dg
import pytest

from recon_assets_tests.defs.parity.test_watchdog import gate, start
from recon_assets_tests.harness.dagster_flow import query

pytestmark = pytest.mark.integration

SECRET = '{"acct1": {"apiKey": "guard-test-key-7f3a", "secret": "guard-test-secret-91c2"}}'


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def everything_recorded(instance, result) -> str:
    """Every event of the run, and the run's own record, as text."""
    events = instance.all_logs(result.run_id)
    run = instance.get_run_by_id(result.run_id)
    return "\n".join([repr(e) for e in events] + [repr(run.tags)])


def refusal(result) -> str:
    failures = [e for e in result.all_events if e.is_failure]
    assert failures, "the run did not fail"
    return "\n".join(str(e.event_specific_data) for e in failures)


def test_an_operator_reason_read_from_the_environment_is_refused_and_never_resolved(
        sim, pg_dsn, instance, monkeypatch):
    monkeypatch.setenv("RECON_EXCHANGE_CREDENTIALS", SECRET)
    defs = start(sim, pg_dsn, instance)
    before = (gate(pg_dsn, "beta"), query(pg_dsn, "SELECT count(*) FROM recon.trading_gate_events"))
    result = defs.resolve_job_def("resume_profile").execute_in_process(
        run_config={"ops": {"resume_profile_op": {"config": {
            "profile_id": "beta", "reason": {"env": "RECON_EXCHANGE_CREDENTIALS"}}}}},
        instance=instance, raise_on_error=False)
    assert not result.success
    why = refusal(result)
    assert "ops.resume_profile_op.config.reason" in why and "{env: ...}" in why
    recorded = everything_recorded(instance, result) + why
    assert "guard-test-key-7f3a" not in recorded and "guard-test-secret-91c2" not in recorded
    assert (gate(pg_dsn, "beta"), query(pg_dsn, "SELECT count(*) FROM recon.trading_gate_events")) == before
    # Refused before the job's first line: not even its launch is recorded.
    assert query(pg_dsn, "SELECT count(*) FROM recon.operator_actions") == [(0,)]


@pytest.mark.parametrize("override, path", [
    # The sequence: the real key, read from the code server's environment, sent to
    # another host that would then serve the positions the decisions are made from.
    ({"exchange": {"config": {"credentials": {"env": "RECON_EXCHANGE_CREDENTIALS"},
                              "api_base_url": "http://other-host.invalid"}}}, "resources.exchange"),
    ({"settings": {"config": {"position_parity_dry_run": False,
                              "position_parity_confirmations": 1,
                              "position_parity_max_notional_pct": 100}}}, "resources.settings"),
])
def test_a_cycle_that_rebinds_a_deployment_resource_is_refused_before_it_reads_anything(
        sim, pg_dsn, instance, monkeypatch, override, path):
    monkeypatch.setenv("RECON_EXCHANGE_CREDENTIALS", SECRET)
    defs = start(sim, pg_dsn, instance)
    cycles = query(pg_dsn, "SELECT count(*) FROM recon.cycles")
    result = defs.resolve_job_def("reconciliation_cycle").execute_in_process(
        run_config={"resources": override}, instance=instance, partition_key="acct1",
        raise_on_error=False)
    assert not result.success
    why = refusal(result)
    assert path in why and "bound by the deployment" in why
    assert "other-host" not in why and "guard-test-key-7f3a" not in why  # paths, never values
    assert query(pg_dsn, "SELECT count(*) FROM recon.cycles") == cycles
    # The same job with no override runs: the refusal was the override's.
    ok = defs.resolve_job_def("reconciliation_cycle").execute_in_process(
        instance=instance, partition_key="acct1", raise_on_error=False)
    assert query(pg_dsn, "SELECT count(*) FROM recon.cycles") != cycles, ok
