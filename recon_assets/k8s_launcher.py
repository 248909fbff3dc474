"""The Kubernetes run launcher for shard runs (issue 16): dagster-k8s's `K8sRunLauncher`, except
that run monitoring asks about a shard's cycle run through its shard run's Job.

A shard run (`defs/reconciliation/shard.py`) executes each account's cycle as its own run inside
the shard's pod. Run monitoring asks the launcher about every STARTED run, and the stock launcher
looks for a Job named after that run's id: a cycle run has none, so monitoring would fail every
cycle of every shard. Here a cycle run is as healthy as the Job of the shard run that executes
it; a cycle run whose shard run is gone or over is failed (its worker is gone). Everything else,
launching included, is the stock launcher's.

The daemon loads this class from the instance config (`deploy/helm/values.yaml`,
`CustomRunLauncher`), so the daemon's and webserver's image is the code-location image
(`Dockerfile`), which has dagster-k8s.
"""

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster_k8s import K8sRunLauncher

from recon_assets.defs.runs import SHARD_RUN_TAG


def run_with_the_worker(instance: dg.DagsterInstance,
                        run: dg.DagsterRun) -> dg.DagsterRun | CheckRunHealthResult:
    """The run whose Job is `run`'s worker: `run` itself, or for a shard's cycle run its shard
    run; or the health verdict when that shard run cannot have a live worker."""
    shard_run_id = run.tags.get(SHARD_RUN_TAG)
    if not shard_run_id:
        return run
    shard = instance.get_run_by_id(shard_run_id)
    if shard is None:
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"its shard run {shard_run_id} is not in this instance")
    if shard.is_finished:
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"its shard run {shard_run_id} is over ({shard.status.value}) "
                                 "while this cycle run had not finished")
    return shard


class ShardAwareK8sRunLauncher(K8sRunLauncher):
    """K8sRunLauncher whose health check answers for a shard's cycle run with the shard's Job."""

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        worker = run_with_the_worker(self._instance, run)
        if isinstance(worker, CheckRunHealthResult):
            return worker
        return super().check_run_worker_health(worker)
