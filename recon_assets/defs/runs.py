"""What the Dagster instance knows about runs, for the rules that depend on it: whether the run
that owns a profile's reconciling gate is still alive, and whether another cycle of an account is
running. The rules themselves are in `core.cycle`."""

import dagster as dg

from recon_assets.core.cycle import orphaned_cycle

# Dagster's tag on a re-executed run (run retries, "re-execute" in the UI) naming the first run.
ROOT_RUN_ID_TAG = "dagster/root_run_id"
# The cycle job's runs are retried from the start (a fresh look at both sides) rather than from
# the failed step, as the same cycle (`cycle_id`): see deploy/dagster.yaml's run_retries.
RETRY_ALL_STEPS = {"dagster/retry_strategy": "ALL_STEPS"}
# Dagster's run monitoring fails a run still going this many seconds after it started.
MAX_RUNTIME_TAG = "dagster/max_runtime"


def cycle_id_of(run: dg.DagsterRun) -> str:
    """The id of the cycle a run of the cycle job is: its own run id, or for a retry of a run
    whose worker died, the first run's, so the retry records as the cycle it continues and its
    heartbeat sighting or clean cycle counts once (a killed cycle that had recorded its findings
    and its retry would otherwise be two consecutive confirmations of one look)."""
    return run.root_run_id or run.tags.get(ROOT_RUN_ID_TAG) or run.run_id


def cycle_id_of_run(instance: dg.DagsterInstance, run_id: str) -> str:
    """`cycle_id_of` the run `run_id` (an event's run); itself when the instance has no such run."""
    run = instance.get_run_by_id(run_id)
    return cycle_id_of(run) if run is not None else run_id


# On a cycle run that a shard run executes in its own process: the shard run's id.
SHARD_RUN_TAG = "recon/shard_run"
SHARD_OP = "reconcile_shard"  # the shard job's op; its config names the shard's accounts


def run_status(instance: dg.DagsterInstance, run_id: str | None) -> str | None:
    """The status name of run `run_id` (e.g. STARTED, FAILURE), None when the instance has no
    such run (an id from another instance, or a run that was deleted)."""
    if not run_id:
        return None
    run = instance.get_run_by_id(run_id)
    return None if run is None else run.status.value


def other_running_runs(instance: dg.DagsterInstance, job_name: str, partition_key: str,
                       own_run_id: str) -> list[str]:
    """Ids of the job's other runs of `partition_key` that are starting or running (a shard's
    cycle whose shard run is over is not running: see `end_orphans`)."""
    records = instance.get_run_records(dg.RunsFilter(
        job_name=job_name, tags={"dagster/partition": partition_key},
        statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
    return sorted(r.dagster_run.run_id for r in _not_orphans(instance, records)
                  if r.dagster_run.run_id != own_run_id)


def _is_orphan(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    shard_run = run.tags.get(SHARD_RUN_TAG)
    return bool(shard_run) and orphaned_cycle(run_status(instance, shard_run))


def _not_orphans(instance: dg.DagsterInstance, records) -> list:
    return [r for r in records if not _is_orphan(instance, r.dagster_run)]


def end_orphans(instance: dg.DagsterInstance, job_name: str, partition_key: str) -> list[str]:
    """Marks canceled the job's runs of `partition_key` that Dagster shows as starting or
    running but whose shard run is over (its process was killed mid-cycle, so no run worker
    will ever finish them); returns their ids. Like any interrupted cycle, they stay in the
    account's history: a confirmation streak that spans one is broken."""
    records = instance.get_run_records(dg.RunsFilter(
        job_name=job_name, tags={"dagster/partition": partition_key},
        statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
    ended = []
    for record in records:
        run = record.dagster_run
        if _is_orphan(instance, run):
            instance.report_run_canceled(run, message=(
                f"canceled: its shard run {run.tags[SHARD_RUN_TAG]} is over, so nothing runs "
                "this cycle any more"))
            ended.append(run.run_id)
    return sorted(ended)


def pending_shard_accounts(instance: dg.DagsterInstance, job_name: str) -> dict[str, str]:
    """Account -> id of the shard run (of `job_name`) that holds it and is queued, starting or
    running: while it is there, the schedule requests no other cycle of the account."""
    records = instance.get_run_records(dg.RunsFilter(
        job_name=job_name, statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                                     dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
    held = {}
    for record in records:
        config = (record.dagster_run.run_config or {}).get("ops", {}).get(SHARD_OP, {})
        for account in config.get("config", {}).get("accounts", []):
            held[account] = record.dagster_run.run_id
    return held


def pending_runs(instance: dg.DagsterInstance, job_name: str, partition_key: str) -> list[str]:
    """Ids of the job's runs of `partition_key` that are queued, starting or running: while
    there is one, the schedule requests no other (one cycle per account in the queue)."""
    records = instance.get_run_records(dg.RunsFilter(
        job_name=job_name, tags={"dagster/partition": partition_key},
        statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                  dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
    return sorted(r.dagster_run.run_id for r in _not_orphans(instance, records))


def previous_cycle_id(instance: dg.DagsterInstance, job_name: str, partition_key: str,
                      cycle_id: str) -> str | None:
    """The cycle of `job_name` for `partition_key` launched just before cycle `cycle_id` (any
    status): the previous cycle of an account, whether it succeeded or not. Runs are counted as
    the cycles they are (`cycle_id_of`): a retry is its first run's cycle, not a cycle between."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=job_name, tags={"dagster/partition": partition_key}), limit=50)
    cycles = list(dict.fromkeys(cycle_id_of(r.dagster_run) for r in records))  # newest first
    if cycle_id in cycles:
        later = cycles.index(cycle_id)
        return cycles[later + 1] if later + 1 < len(cycles) else None
    return cycles[0] if cycles else None


def newest_attempt(instance: dg.DagsterInstance, cycle_id: str) -> str:
    """The run id of the newest attempt of cycle `cycle_id` (itself, or its newest retry)."""
    retries = instance.get_run_records(dg.RunsFilter(tags={ROOT_RUN_ID_TAG: cycle_id}), limit=1)
    return retries[0].dagster_run.run_id if retries else cycle_id


_NOT_STARTED = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING}


def started_runs(instance: dg.DagsterInstance, job_name: str, partition_key: str,
                 limit: int = 50) -> list[tuple[str, str, float]]:
    """(cycle id, status name, start time as unix seconds) of the job's runs of `partition_key`
    that started (finished or still running), newest first: an account's cycle history as the
    instance knows it, failures included (a failed cycle the failure sensor did not record yet
    is still a failed cycle)."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=job_name, tags={"dagster/partition": partition_key}), limit=limit)
    cycles: dict[str, tuple[str, str, float]] = {}
    for record in records:
        run = record.dagster_run
        if run.status in _NOT_STARTED:
            continue
        started = float(record.start_time or record.create_timestamp.timestamp())
        cycle = cycle_id_of(run)
        # One entry per cycle: a retried cycle has the status of its newest run (the one that
        # died before it is the same cycle, not a failed one) and the start of its first.
        newest = cycles.get(cycle)
        cycles[cycle] = (cycle, newest[1] if newest else run.status.value,
                         min(started, newest[2]) if newest else started)
    return list(cycles.values())
