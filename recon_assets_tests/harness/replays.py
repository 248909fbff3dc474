"""Replays of the reconciliation loop in run-worker processes that can be SIGKILLed (issue 18).

`ReplayServer` is a process of its own (`python -m recon_assets_tests.harness.replays`) that
imports Dagster and the code location once, then forks one child per job it is sent: a forked
child starts in milliseconds, so a test can kill and recover the loop at dozens of points. Each
job runs the loop (`harness.loop.LoopDriver`) from a checkpoint (a copy of the trading database
and of the Dagster instance's folder, the journal inside it) up to the end of one step, maybe
killed at its n-th store call; the baseline job writes a checkpoint after every step.

The exchange simulator stays in the test's process, like the real exchange outlives a run
worker: the loop only reads from it, so every replay sees the same exchange.

The server is stopped by its pid (`close()`), and so is every child.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg


def _resources(job: dict):
    from recon_assets.demo import local_resources
    from recon_assets.settings import ReconSettings
    from recon_assets_tests.harness.exchange import FAST_RETRIES

    class _Sim:  # what local_resources needs of the simulator
        url, credentials = job["sim_url"], staticmethod(lambda: job["credentials"])

    resources = local_resources(job["dsn"], _Sim(), ReconSettings(**job["settings"]),
                                max_attempts=2, **FAST_RETRIES)
    if job.get("statement_timeout_ms"):
        # Short enough that a held lock (the statement-timeout fault) ends the call in seconds.
        from recon_assets.resources.database import PostgresStore
        from recon_assets.resources.io_manager import PostgresFrameIOManager

        timeout = job["statement_timeout_ms"]
        store = PostgresStore(dsn=job["dsn"], statement_timeout_ms=timeout,
                              lock_timeout_ms=timeout)
        resources.update(database=store, io_manager=PostgresFrameIOManager(database=store))
    return resources


def run_job(job: dict) -> None:
    """In a forked child: the loop from `job["home"]` up to the end of `job["until"]` (a segment
    such as "2:lifecycle_correction_sensor#1", see `LoopDriver.run`), or every step of
    `job["rounds"]` rounds; killed at call `job["kill_at"]` (`job["when"]` the call); with
    `job["checkpoints"]`, a checkpoint of the database and the instance after every segment."""
    import dagster as dg

    from recon_assets.definitions import build_defs
    from recon_assets_tests.harness import loop

    loop.count_store_calls(job.get("kill_at"), job.get("when", "before"))
    defs = build_defs(_resources(job))
    home = Path(job["home"])
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        if job.get("partitions"):
            for name, keys in job["partitions"].items():
                instance.add_dynamic_partitions(name, keys)
        driver = loop.LoopDriver(defs, home)
        segments: list[str] = []

        def after(segment: str) -> None:
            segments.append(segment)
            if job.get("checkpoints"):
                checkpoint(job, segment)
        if job.get("db_fault"):
            # A database fault inside this run worker (harness/db_faults.py, test-only).
            from recon_assets_tests.harness.db_faults import inject_fault

            spec = job["db_fault"]
            with inject_fault(spec["kind"], spec.get("function"), nth=spec.get("nth", 1)) as fault:
                driver.run(job["rounds"], instance, until=job.get("until"), after=after)
            Path(job["home"], "db-fault.json").write_text(json.dumps(
                {"fired": fault.fired, "errors": [str(e) if e else None for e in fault.errors]}))
        else:
            driver.run(job["rounds"], instance, until=job.get("until"), after=after)
    if job.get("segments_file"):
        Path(job["segments_file"]).write_text(json.dumps(segments))
    if job.get("calls_file"):
        Path(job["calls_file"]).write_text(json.dumps(loop.CALLS.calls))


def checkpoint(job: dict, key: str) -> None:
    """The trading database copied as a template database, the instance folder copied beside."""
    name = checkpoint_name(job["checkpoint_prefix"], key)
    admin = job["admin_dsn"]
    db = job["dsn"].rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(admin, autocommit=True) as conn:
        # The loop's kept connections hold the database open; a template must have none.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (db,))
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{db}"')
    shutil.copytree(job["home"], Path(job["checkpoint_dir"]) / name)


def checkpoint_name(prefix: str, key: str) -> str:
    return f"{prefix}_{key.replace(':', '_').replace('#', '_')}"[:63]


def serve() -> int:
    """Read one job (JSON) per line; fork a child for it; answer its exit status as a line."""
    import dagster  # noqa: F401 - imported once, here, for every child
    import recon_assets.definitions  # noqa: F401
    import recon_assets_tests.harness.loop  # noqa: F401

    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.setsid()
                run_job(job)
            except BaseException as exc:  # noqa: BLE001 - reported to the test, then exit
                print(f"replay job failed: {type(exc).__name__}: {exc}", file=sys.stderr,
                      flush=True)
                code = 3
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                          "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}),
              flush=True)
    return 0


class ReplayServer:
    """The fork server as a subprocess; `run(job)` returns {"signal", "code"} of the child."""

    def __init__(self, log_path: Path):
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recon_assets_tests.harness.replays"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, start_new_session=True)

    def run(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the replay server exited ({self.proc.poll()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


if __name__ == "__main__":
    sys.exit(serve())
