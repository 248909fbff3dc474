"""The deployment's Dagster instance (deploy/dagster.yaml), loaded by Dagster itself against a
real PostgreSQL: its storage, the run queue's limits, run monitoring and run retries are what
docs/configuration.md says."""

import pathlib
import shutil

import dagster as dg
import pytest
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_postgres import PostgresRunStorage

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[1]


def dagster_pg_env(url: str) -> dict[str, str]:
    """The DAGSTER_PG_* variables deploy/dagster.yaml reads, for a database URL of the test's
    PostgreSQL (trust authentication: the password is not checked)."""
    user_host, _, db = url.removeprefix("postgresql://").rpartition("/")
    user, _, host_port = user_host.partition("@")
    host, _, port = host_port.partition(":")
    return {f"DAGSTER_PG_{name}": value for name, value in (
        ("USERNAME", user), ("PASSWORD", "unused-trust-auth"), ("HOST", host), ("DB", db),
        ("PORT", port))}


def test_the_deployment_instance_loads_with_postgres_storage_limits_monitoring_and_retries(
        pg_server, tmp_path, monkeypatch):
    url = pg_server.create_database("dagster_deploy")
    for name, value in dagster_pg_env(url).items():
        monkeypatch.setenv(name, value)
    shutil.copy(REPO / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        instance.add_dynamic_partitions("exchange_accounts", ["acct1"])  # the storage works
        assert instance.get_dynamic_partitions("exchange_accounts") == ["acct1"]
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        limits = {limit["key"]: limit for limit in coordinator.get_run_queue_config().tag_concurrency_limits}
        assert {k: (v["limit"], v["value"]["applyLimitPerUniqueValue"]) for k, v in limits.items()} == {
            "recon/profile": (1, True), "recon/account": (1, True)}
        assert coordinator.get_run_queue_config().max_concurrent_runs == 8
        assert instance.run_monitoring_enabled and instance.run_monitoring_start_timeout_seconds == 180
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        assert not instance.run_retries_retry_on_asset_or_op_failure
    pg_server.drop_database("dagster_deploy")
