"""The deployment's Dagster instance (deploy/dagster.yaml), loaded by Dagster itself against a
real PostgreSQL: its storage, the run queue's limits, run monitoring and run retries are what
docs/configuration.md says."""

import importlib
import pathlib
import re
import shutil

import dagster as dg
import pytest
import sqlalchemy
import yaml
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_postgres import PostgresRunStorage

from recon_assets.dagster_storage import PooledPostgresStorage
from recon_assets.local_postgres import dagster_pg_env

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_deployment_instance_loads_with_postgres_storage_limits_monitoring_and_retries(
        pg_server, tmp_path, monkeypatch):
    url = pg_server.create_database("dagster_deploy")
    for name, value in dagster_pg_env(url).items():
        monkeypatch.setenv(name, value)
    shutil.copy(REPO / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.get_ref().storage, PooledPostgresStorage)
        assert isinstance(instance.run_storage, PostgresRunStorage)
        instance.add_dynamic_partitions("exchange_accounts", ["acct1"])  # the storage works
        assert instance.get_dynamic_partitions("exchange_accounts") == ["acct1"]
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        limits = {limit["key"]: limit for limit in coordinator.get_run_queue_config().tag_concurrency_limits}
        assert {k: (v["limit"], v["value"]) for k, v in limits.items()} == {
            "recon/profile": (1, {"applyLimitPerUniqueValue": True}),
            "recon/account": (1, {"applyLimitPerUniqueValue": True}),
            "recon/job": (1, "policy_replay")}  # one policy replay at a time
        from recon_assets.defs.replay.definitions import policy_replay_job
        assert policy_replay_job.tags["recon/job"] == "policy_replay"  # what the limit matches
        assert coordinator.get_run_queue_config().max_concurrent_runs == 8
        assert instance.run_monitoring_enabled and instance.run_monitoring_start_timeout_seconds == 180
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        assert not instance.run_retries_retry_on_asset_or_op_failure
    pg_server.drop_database("dagster_deploy")


def _new_connections(instance, work) -> int:
    """How many database connections the instance's storage opens for `work` (SQLAlchemy's
    connect event on each of its engines: a connection taken from the pool again is not new)."""
    opened = []
    engines = [s._engine for s in (instance.run_storage, instance.event_log_storage,
                                   instance.schedule_storage)]
    for engine in engines:
        sqlalchemy.event.listen(engine, "connect", lambda *_: opened.append(1))
    work()
    return len(opened)


@pytest.mark.parametrize("kind", ["stock", "pooled"])
def test_the_deployment_storage_holds_its_connections_where_dagster_postgres_reconnects(
        pg_server, tmp_path, monkeypatch, kind):
    """deploy/dagster.yaml's storage (PooledPostgresStorage) serves a run's worth of storage
    calls over the connection it holds; dagster-postgres's own storage, with the same database
    settings, opens one per call (what made a cycle cost 484 new connections)."""
    url = pg_server.create_database(f"dagster_pool_{kind}")
    for name, value in dagster_pg_env(url).items():
        monkeypatch.setenv(name, value)
    config = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    if kind == "stock":
        config["storage"] = {"postgres": {
            "postgres_db": config["storage"]["custom"]["config"]["postgres_db"]}}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    calls = 30
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        run = instance.create_run_for_job(dg.GraphDefinition("noop").to_job(), run_id=None)

        def work():
            for i in range(calls):
                instance.report_engine_event(f"event {i}", run)
                assert instance.get_run_by_id(run.run_id) is not None

        opened = _new_connections(instance, work)
        logged = instance.all_logs(run.run_id)
    assert sum(1 for e in logged if e.message.startswith("event ")) == calls
    if kind == "pooled":
        assert opened <= 2, f"{opened} connections for {2 * calls} calls"
    else:
        assert opened >= 2 * calls, opened  # the baseline the pooled storage is measured against
    pg_server.drop_database(f"dagster_pool_{kind}")


# The Helm chart's camelCase keys for what deploy/helm/values.yaml sets, and the instance's
# names they render to (the chart's _run-coordinator / run monitoring templates).
HELM_INSTANCE_KEYS = {"enabled": "enabled", "maxConcurrentRuns": "max_concurrent_runs",
                      "tagConcurrencyLimits": "tag_concurrency_limits",
                      "startTimeoutSeconds": "start_timeout_seconds",
                      "cancelTimeoutSeconds": "cancel_timeout_seconds",
                      "pollIntervalSeconds": "poll_interval_seconds",
                      "maxResumeRunAttempts": "max_resume_run_attempts",
                      "maxRetries": "max_retries",
                      "retryOnAssetOrOpFailure": "retry_on_asset_or_op_failure",
                      "containerConfig": "container_config", "jobSpecConfig": "job_spec_config",
                      "podSpecConfig": "pod_spec_config", "jobConfig": "job_config"}


def _instance_names(values: dict, *keep: str) -> dict:
    out = {}
    for key, value in values.items():
        if key in keep:
            continue
        assert key in HELM_INSTANCE_KEYS, f"deploy/helm/values.yaml: unmapped key {key}"
        out[HELM_INSTANCE_KEYS[key]] = value
    return out


def test_the_helm_values_render_the_deployment_instance_and_a_valid_k8s_run_launcher(
        monkeypatch):
    """deploy/helm/values.yaml and deploy/dagster.yaml say the same about the queue, monitoring
    and retries (one set of numbers in two formats), and the K8sRunLauncher part is accepted by
    dagster-k8s's own config schema."""
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    instance = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == instance["run_coordinator"]["class"]
    assert _instance_names(daemon["runCoordinator"]["config"]["queuedRunCoordinator"]) == \
        instance["run_coordinator"]["config"]
    assert _instance_names(daemon["runMonitoring"]) == instance["run_monitoring"]
    assert _instance_names(daemon["runRetries"]) == instance["run_retries"]
    assert values["postgresql"]["postgresqlScheme"] == instance["storage"]["custom"]["config"][
        "postgres_db"]["scheme"]

    # The launcher: dagster-k8s's K8sRunLauncher as recon_assets.k8s_launcher's subclass (run
    # monitoring of shard runs), its config accepted by dagster-k8s's own schema once the
    # chart's environment variables are resolved.
    assert values["runLauncher"]["type"] == "CustomRunLauncher"
    custom = values["runLauncher"]["config"]["customRunLauncher"]
    launcher_class = getattr(importlib.import_module(custom["module"]), custom["class"])
    assert issubclass(launcher_class, K8sRunLauncher)
    for name, value in (("DAGSTER_HOME", "/opt/dagster/dagster_home"),  # as the chart sets them
                        ("DAGSTER_K8S_INSTANCE_CONFIG_MAP", "recon-dagster-instance"),
                        ("DAGSTER_K8S_PG_PASSWORD_SECRET", "dagster-postgresql-secret"),
                        ("DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP", "recon-dagster-pipeline-env")):
        monkeypatch.setenv(name, value)
    result = process_config(launcher_class.config_type(), custom["config"])
    assert result.success, [error.message for error in result.errors]
    assert {key: value for key, value in custom["config"].items() if isinstance(value, dict)
            and "env" in value} == {  # the variables the chart's own K8sRunLauncher uses
        "dagster_home": {"env": "DAGSTER_HOME"},
        "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
        "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"}}
    # The daemon and the webserver import that class: they run the code-location image.
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert values["dagsterDaemon"]["image"] == values["dagsterWebserver"]["image"] == \
        deployment["image"]

    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "recon_assets.definitions",
                                                "--attribute", "defs"]
    assert [s["name"] for s in deployment["envSecrets"]] == ["recon-assets-secrets"]
    # No secret's value in the values file: only the names of Kubernetes Secrets.
    assert not {e["name"] for e in deployment.get("env", [])} & {
        "RECON_DATABASE_URL", "RECON_EXCHANGE_CREDENTIALS", "RECON_ALERT_WEBHOOK_URL"}


def test_the_code_location_image_installs_a_package_that_carries_its_sql(tmp_path):
    """The Dockerfile installs the package non-editable (`pip install .`): the wheel must carry
    the migrations and SQL functions the code location applies, and the Dockerfile must run the
    code location the Helm values name. (No Docker engine runs here to build the image itself.)"""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "--disable-pip-version-check", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("recon_assets-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("migrations", "functions"):
        expected = {f"recon_assets/db/{folder}/{p.name}"
                    for p in (REPO / "recon_assets" / "db" / folder).iterdir()
                    if p.suffix == ".sql" or p.name == "ORDER"}
        assert expected and expected <= names, sorted(expected - names)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "RUN pip install --no-deps ." in dockerfile
    assert '"-m", "recon_assets.definitions", "-a", "defs"' in dockerfile


def test_the_helm_values_close_the_door():
    """Issue 38: every pod non-root on a read-only root filesystem with no privilege escalation
    and no capabilities, run pods without a service-account token, a read-only webserver for
    viewers and the writable one behind an authenticating proxy, and only the daemon and the
    webservers allowed to the code server's gRPC port."""
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    run = values["runLauncher"]["config"]["customRunLauncher"]["config"]["run_k8s_config"]
    pods = {"user code": (deployment["podSecurityContext"], deployment["securityContext"]),
            "webserver": (values["dagsterWebserver"]["podSecurityContext"],
                          values["dagsterWebserver"]["securityContext"]),
            "daemon": (values["dagsterDaemon"]["podSecurityContext"],
                       values["dagsterDaemon"]["securityContext"]),
            "run": (run["pod_spec_config"]["securityContext"],
                    run["container_config"]["securityContext"])}
    for name, (pod, container) in pods.items():
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, name
        assert container == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                             "privileged": False, "capabilities": {"drop": ["ALL"]}}, name
    # The image's user (Dockerfile) is the one the pods run as.
    assert f"--uid {pods['run'][0]['runAsUser']} " in (REPO / "Dockerfile").read_text()
    # A read-only root filesystem: /tmp and the compute logs are emptyDirs, in every pod.
    for mounts in (deployment["volumeMounts"], values["dagsterWebserver"]["volumeMounts"],
                   values["dagsterDaemon"]["volumeMounts"], run["container_config"]["volume_mounts"]):
        assert {m["mountPath"] for m in mounts} == {"/tmp", "/opt/dagster/dagster_home/storage"}
    assert run["pod_spec_config"]["automountServiceAccountToken"] is False
    assert values["dagsterWebserver"]["enableReadOnly"] is True
    ingress = values["ingress"]
    assert ingress["enabled"] and "nginx.ingress.kubernetes.io/auth-url" in ingress["annotations"]
    assert ingress["dagsterWebserver"]["host"] != ingress["readOnlyDagsterWebserver"]["host"]
    # Every pod's image pinned by digest, the same one everywhere (run pods use the code
    # server's).
    tags = {deployment["image"]["tag"], values["dagsterWebserver"]["image"]["tag"],
            values["dagsterDaemon"]["image"]["tag"]}
    assert len(tags) == 1 and re.fullmatch(r"[\w.-]+@sha256:[0-9a-f]{64}", tags.pop())
    policy = yaml.safe_load((REPO / "deploy" / "helm" / "networkpolicy.yaml").read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"component": "user-deployments"}}
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": deployment["port"]}]
    (source,) = rule["from"]
    assert source["podSelector"]["matchExpressions"] == [
        {"key": "component", "operator": "In", "values": ["dagster-daemon", "dagster-webserver"]}]
