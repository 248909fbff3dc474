"""The whole reconciliation loop as the daemon drives it, resumable after its process is killed
(issue 18's kill points and soak).

A *round* is what the daemon does for every account once: the schedule's tick and the cycle runs
it requests (snapshots, diff, parity heartbeat, EXIT backfill candidates, the watchdog's pause
and auto-resume checks), then the sensors in order (summary, lifecycle corrections, parity
synthetic exits, EXIT backfill, escalation) and the runs they request. `LoopDriver` executes the
rounds against a Dagster instance on disk and keeps a journal beside it, the way the daemon keeps
its state in the instance:

- a tick's cursor and the runs it requested are written together once the tick is evaluated (the
  daemon stores the cursor and queues the runs; nothing of a tick survives a kill before that);
- a run is taken off the queue once it is over (succeeded or failed: a failed run is not retried,
  as `run_retries.retry_on_asset_or_op_failure: false` in deploy/dagster.yaml);
- when the driver starts again, a run left STARTED by the killed process is marked failed (run
  monitoring) and run again with the same job, partition, config and tags (run retries,
  `max_retries: 1`), then the rounds go on where they were.

`kill_after_calls(n, when)` patches the trading store in this process (the test-only kill switch:
the reconciler has no such hook) to SIGKILL the process at its n-th call, before the call is sent
or after its result came back; every read and write of the reconciler is one such call.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The sensors of a round, in the order the daemon's ticks would see the cycle's events.
ROUND_SENSORS = ("reconciliation_summary_sensor", "lifecycle_correction_sensor",
                 "position_parity_sensor", "exit_backfill_sensor", "escalation_sensor")
SCHEDULE = "reconciliation_cycle_schedule"
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class CallLog:
    """Every store call of this process, labelled by the step that made it."""

    step: str = ""
    calls: list[tuple[str, str]] = field(default_factory=list)


CALLS = CallLog()
_installed = False


def count_store_calls(kill_at: int | None = None, when: str = "before") -> None:
    """Count (and label) every trading-store call of this process; SIGKILL it at call `kill_at`
    (`when` = "before" the call is sent or "after" its result is back)."""
    global _installed
    from recon_assets.resources.database import PostgresStore

    if _installed:
        return
    _installed = True
    call, snapshot = PostgresStore.call, PostgresStore.snapshot_account

    def counted(real, name_of):
        def wrapper(self, *args, **kwargs):
            name = name_of(args)
            CALLS.calls.append((CALLS.step, name))
            n = len(CALLS.calls)
            if kill_at == n and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(self, *args, **kwargs)
            if kill_at == n and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return wrapper

    PostgresStore.call = counted(call, lambda a: a[0])
    PostgresStore.snapshot_account = counted(snapshot, lambda a: "recon_snapshot_account")


class _Until(Exception):
    """The segment asked for is over: stop here."""


class LoopDriver:
    """Runs `rounds` rounds of the loop on the instance in `home`, journalled in `home`."""

    def __init__(self, defs, home: Path, clock: Callable[[], dt.datetime] | None = None):
        self.defs, self.home = defs, Path(home)
        self.journal_path = self.home / "loop-journal.json"
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.journal = (json.loads(self.journal_path.read_text()) if self.journal_path.exists()
                        else {"cursors": {}, "done": [], "queue": [], "runs": []})

    def _save(self) -> None:
        tmp = self.journal_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.journal))
        os.replace(tmp, self.journal_path)  # atomic: a kill leaves the old or the new journal

    def steps(self, rounds: int) -> list[str]:
        """The step keys of `rounds` rounds, in order ("<round>:<schedule or sensor>")."""
        return [f"{r}:{name}" for r in range(rounds) for name in (SCHEDULE, *ROUND_SENSORS)]

    def run(self, rounds: int, instance, until: str | None = None,
            after: Callable[[str], None] | None = None) -> None:
        """The rounds from where the journal says the loop is, up to the end of segment `until`
        (all of them without). A segment is a step's tick ("<step>#0") or its i-th run
        ("<step>#<i>"); `after(segment)` runs once each one is over. No step after `until`'s
        step is ever started: a run whose `until` is already over (a worker that was to be
        killed but made fewer calls than its kill point finished the step itself) only
        finishes what is queued, it does not run the rest of the rounds."""
        warnings.filterwarnings("ignore")
        self._until, self._after = until, after
        keys = self.steps(rounds)
        if until is not None:
            step = until.rsplit("#", 1)[0]
            if step not in keys:
                raise ValueError(f"until={until!r} is no segment of {rounds} rounds")
            keys = keys[:keys.index(step) + 1]
        try:
            self._drain(instance)  # what a killed process left: a queue, maybe a run STARTED
            for key in keys:
                if key not in self.journal["done"]:
                    name = key.split(":", 1)[1]
                    self._tick(instance, key, self._schedule_tick if name == SCHEDULE
                               else lambda inst, n=name: self._sensor_tick(inst, n))
        except _Until:
            pass

    def _over(self, segment: str) -> None:
        if self._after:
            self._after(segment)
        if segment == self._until:
            raise _Until

    # -- the daemon's parts ------------------------------------------------------------------
    def _tick(self, instance, key: str, evaluate) -> None:
        CALLS.step = f"{key}#0"
        requests = evaluate(instance)
        self.journal["queue"] += [dict(r, tick=key, n=i + 1) for i, r in enumerate(requests)]
        self.journal["done"].append(key)
        self._save()
        self._over(f"{key}#0")
        self._drain(instance)

    def _drain(self, instance) -> None:
        while self.journal["queue"]:
            request = self.journal["queue"][0]
            run = instance.get_run_by_id(request["run_id"]) if request.get("run_id") else None
            if run is None or not run.is_finished:
                if run is not None:
                    # Run monitoring: the worker of a STARTED run is gone. Run retries: again,
                    # tagged as Dagster tags a re-execution (parent and root run).
                    instance.report_run_failed(run, "the run worker process died")
                    request["tags"] = {**request["tags"], "dagster/parent_run_id": run.run_id,
                                       "dagster/root_run_id":
                                           run.tags.get("dagster/root_run_id", run.run_id)}
                    self.journal["killed_runs"] = [*self.journal.get("killed_runs", []),
                                                   run.run_id]
                self._execute(instance, request)
                run = instance.get_run_by_id(request["run_id"])
            self.journal["runs"].append({**request, "status": run.status.value})
            self.journal["queue"].pop(0)
            self._save()
            self._over(f"{request['tick']}#{request['n']}")

    def _execute(self, instance, request: dict) -> str:
        job = self.defs.resolve_job_def(request["job"])
        CALLS.step = f"{request['tick']}#{request['n']}"
        request["run_id"] = str(uuid.uuid4())
        self._save()  # the run is known before it starts, as a queued run is
        outcome = job.execute_in_process(run_config={**request["run_config"], **QUIET},
                                         instance=instance, tags=request["tags"],
                                         partition_key=request["partition_key"],
                                         run_id=request["run_id"], raise_on_error=False)
        return outcome.run_id

    def _schedule_tick(self, instance) -> list[dict]:
        import dagster as dg

        schedule = self.defs.get_schedule_def(SCHEDULE)
        with dg.build_schedule_context(
                instance=instance, scheduled_execution_time=self.clock(),
                repository_def=self.defs.get_repository_def(),
                resources={"settings": self.defs.resources["settings"]}) as context:
            tick = schedule.evaluate_tick(context)
        return [_request("reconciliation_cycle", r) for r in tick.run_requests]

    def _sensor_tick(self, instance, name: str) -> list[dict]:
        import dagster as dg

        sensor = self.defs.get_sensor_def(name)
        resources = {k: self.defs.resources[k] for k in ("database", "alert_webhook", "settings")
                     if k in self.defs.resources}
        with dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(),
                                     cursor=self.journal["cursors"].get(name), definitions=self.defs,
                                     resources=resources) as context:
            result = sensor.evaluate_tick(context)
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        if result.cursor is not None:
            self.journal["cursors"][name] = result.cursor
        job = sensor.job_name if sensor.has_jobs else None
        return [_request(job, r) for r in result.run_requests]


def _request(job: str, request) -> dict:
    return {"job": job, "partition_key": request.partition_key,
            "run_config": request.run_config or {}, "tags": dict(request.tags)}
