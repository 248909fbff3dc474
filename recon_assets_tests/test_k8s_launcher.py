"""Run monitoring on Kubernetes with shard runs (issue 16): `ShardAwareK8sRunLauncher` answers
for a shard's cycle run with the Job of its shard run, where dagster-k8s's own launcher finds no
Job and monitoring would fail the cycle.

No Kubernetes API server can run on this machine, so the launcher's real Kubernetes client talks
to a loopback stand-in (in this file) that answers the one call the health check makes,
`GET /apis/batch/v1/namespaces/{namespace}/jobs/{name}/status`, with a Job's status or a 404
Status object, as the API server does. Runs live in a real (ephemeral) Dagster instance."""

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
import yaml
from dagster._core.launcher import WorkerStatus
from dagster_k8s import K8sRunLauncher

from recon_assets.defs.runs import SHARD_RUN_TAG
from recon_assets.k8s_launcher import ShardAwareK8sRunLauncher

pytestmark = pytest.mark.integration

NAMESPACE = "recon"


class _JobStatusApi(BaseHTTPRequestHandler):
    jobs: dict[str, dict] = {}  # Job name -> its .status

    def do_GET(self):  # noqa: N802 - http.server's name
        parts = self.path.split("?")[0].strip("/").split("/")
        # apis/batch/v1/namespaces/{ns}/jobs/{name}/status
        found = (len(parts) == 8 and parts[:4] == ["apis", "batch", "v1", "namespaces"]
                 and parts[4] == NAMESPACE and parts[5] == "jobs" and parts[7] == "status"
                 and parts[6] in self.jobs)
        if found:
            body = {"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": parts[6], "namespace": NAMESPACE},
                    "status": self.jobs[parts[6]]}
            code = 200
        else:
            body = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 404,
                    "reason": "NotFound", "message": f"jobs.batch \"{parts[-2]}\" not found"}
            code = 404
        payload = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def kube(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JobStatusApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
        "clusters": [{"name": "stand-in",
                      "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "recon", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "recon"}}]}))
    _JobStatusApi.jobs = {}
    try:
        yield str(kubeconfig), _JobStatusApi.jobs
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _launcher(cls, kubeconfig: str, instance: dg.DagsterInstance):
    launcher = cls(service_account_name="recon-dagster", instance_config_map="recon-instance",
                   dagster_home="/opt/dagster/dagster_home", load_incluster_config=False,
                   kubeconfig_file=kubeconfig, job_namespace=NAMESPACE)
    launcher.register_instance(instance)
    return launcher


def _run(instance, job_name: str, status: dg.DagsterRunStatus, tags=None) -> dg.DagsterRun:
    run = dg.DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), status=status,
                        tags=tags or {})
    instance.add_run(run)
    return run


def test_a_shard_cycle_run_is_as_healthy_as_its_shard_runs_job(kube):
    kubeconfig, jobs = kube
    with dg.DagsterInstance.ephemeral() as instance:
        shard = _run(instance, "reconciliation_shard", dg.DagsterRunStatus.STARTED)
        cycle = _run(instance, "reconciliation_cycle", dg.DagsterRunStatus.STARTED,
                     {SHARD_RUN_TAG: shard.run_id})
        jobs[f"dagster-run-{shard.run_id}"] = {"active": 1}

        stock = _launcher(K8sRunLauncher, kubeconfig, instance)
        ours = _launcher(ShardAwareK8sRunLauncher, kubeconfig, instance)
        # The defect: the stock launcher finds no Job for the cycle run; monitoring fails it.
        assert stock.check_run_worker_health(cycle).status == WorkerStatus.UNKNOWN
        assert ours.check_run_worker_health(cycle).status == WorkerStatus.RUNNING
        assert ours.check_run_worker_health(shard).status == WorkerStatus.RUNNING

        # The shard's pod is gone while the cycle run is still started: the cycle is failed.
        jobs[f"dagster-run-{shard.run_id}"] = {"active": 0, "failed": 1}
        assert ours.check_run_worker_health(cycle).status == WorkerStatus.FAILED


def test_a_cycle_run_whose_shard_run_is_over_or_unknown_has_no_worker(kube):
    kubeconfig, jobs = kube
    with dg.DagsterInstance.ephemeral() as instance:
        shard = _run(instance, "reconciliation_shard", dg.DagsterRunStatus.FAILURE)
        jobs[f"dagster-run-{shard.run_id}"] = {"active": 1}  # not consulted: the run is over
        orphan = _run(instance, "reconciliation_cycle", dg.DagsterRunStatus.STARTED,
                      {SHARD_RUN_TAG: shard.run_id})
        stray = _run(instance, "reconciliation_cycle", dg.DagsterRunStatus.STARTED,
                     {SHARD_RUN_TAG: str(uuid.uuid4())})
        ours = _launcher(ShardAwareK8sRunLauncher, kubeconfig, instance)
        over = ours.check_run_worker_health(orphan)
        assert over.status == WorkerStatus.FAILED and "is over (FAILURE)" in over.msg
        unknown = ours.check_run_worker_health(stray)
        assert unknown.status == WorkerStatus.FAILED and "not in this instance" in unknown.msg


def test_a_run_of_its_own_is_checked_through_its_own_job(kube):
    kubeconfig, jobs = kube
    with dg.DagsterInstance.ephemeral() as instance:
        cycle = _run(instance, "reconciliation_cycle", dg.DagsterRunStatus.STARTED)
        ours = _launcher(ShardAwareK8sRunLauncher, kubeconfig, instance)
        assert ours.check_run_worker_health(cycle).status == WorkerStatus.UNKNOWN  # no Job yet
        jobs[f"dagster-run-{cycle.run_id}"] = {"active": 1}
        assert ours.check_run_worker_health(cycle).status == WorkerStatus.RUNNING
        # Its pod ended while the run says started: the stock launcher's verdict, unchanged.
        jobs[f"dagster-run-{cycle.run_id}"] = {"active": 0, "succeeded": 1}
        assert ours.check_run_worker_health(cycle).status == WorkerStatus.FAILED
