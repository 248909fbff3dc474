"""What the Dagster instance knows about runs, for the rules that depend on it: whether the run
that owns a profile's reconciling gate is still alive, and whether another cycle of an account is
running. The rules themselves are in `core.cycle`."""

import dagster as dg


def run_status(instance: dg.DagsterInstance, run_id: str | None) -> str | None:
    """The status name of run `run_id` (e.g. STARTED, FAILURE), None when the instance has no
    such run (an id from another instance, or a run that was deleted)."""
    if not run_id:
        return None
    run = instance.get_run_by_id(run_id)
    return None if run is None else run.status.value


def other_running_runs(instance: dg.DagsterInstance, job_name: str, partition_key: str,
                       own_run_id: str) -> list[str]:
    """Ids of the job's other runs of `partition_key` that are starting or running."""
    records = instance.get_run_records(dg.RunsFilter(
        job_name=job_name, tags={"dagster/partition": partition_key},
        statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
    return sorted(r.dagster_run.run_id for r in records if r.dagster_run.run_id != own_run_id)


def pending_runs(instance: dg.DagsterInstance, job_name: str, partition_key: str) -> list[str]:
    """Ids of the job's runs of `partition_key` that are queued, starting or running: while
    there is one, the schedule requests no other (one cycle per account in the queue)."""
    records = instance.get_run_records(dg.RunsFilter(
        job_name=job_name, tags={"dagster/partition": partition_key},
        statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                  dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
    return sorted(r.dagster_run.run_id for r in records)


def previous_run_id(instance: dg.DagsterInstance, job_name: str, partition_key: str,
                    run_id: str) -> str | None:
    """The run of `job_name` for `partition_key` launched just before `run_id` (any status):
    the previous cycle of an account, whether it succeeded or not."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=job_name, tags={"dagster/partition": partition_key}), limit=50)
    ids = [r.dagster_run.run_id for r in records]  # newest first
    if run_id in ids:
        later = ids.index(run_id)
        return ids[later + 1] if later + 1 < len(ids) else None
    return ids[0] if ids else None


_NOT_STARTED = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING}


def started_runs(instance: dg.DagsterInstance, job_name: str, partition_key: str,
                 limit: int = 50) -> list[tuple[str, str, float]]:
    """(run id, status name, start time as unix seconds) of the job's runs of `partition_key`
    that started (finished or still running), newest first: an account's cycle history as the
    instance knows it, failures included (a failed cycle the failure sensor did not record yet
    is still a failed cycle)."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=job_name, tags={"dagster/partition": partition_key}), limit=limit)
    out = []
    for record in records:
        run = record.dagster_run
        if run.status in _NOT_STARTED:
            continue
        started = record.start_time or record.create_timestamp.timestamp()
        out.append((run.run_id, run.status.value, float(started)))
    return out
