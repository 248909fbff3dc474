"""The reconciliation cycle: one run per exchange account, driven by a schedule, on its own or
in a shard run with other accounts' cycles (`shard.py`, RECON_CYCLE_SHARD_SIZE)."""

import dagster as dg

from recon_assets.core.cycle import account_shards, interrupted
from recon_assets.core.rules import CYCLE_DEADLINE_SECONDS
from recon_assets.core.request_weights import WEIGHT_LIMIT_PER_MINUTE, AccountLoad, spread_cycles
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.defs.reconciliation.assets import reconciliation_diff
from recon_assets.defs.reconciliation.summary import (reconciliation_summary,
                                                      reconciliation_summary_sensor)
from recon_assets.defs.reconciliation.shard import SHARD_JOB, reconciliation_shard_job
from recon_assets.defs.runs import (MAX_RUNTIME_TAG, RETRY_ALL_STEPS, SHARD_OP, cycle_id_of,
                                    pending_runs, pending_shard_accounts)
from recon_assets.resources.database import TradingStore
from recon_assets.resources.recon_store import ReconStore
from recon_assets.settings import ReconSettings

# One cycle = snapshots of both sides and the diff, for one account; its run id is the cycle id
# (a retried run's: its first run's, `cycle_id_of`).
reconciliation_cycle_job = dg.define_asset_job(
    "reconciliation_cycle",
    selection=dg.AssetSelection.groups("database", "exchange", "reconciliation", "backfill",
                                       "parity"),
    # Partitioned by exchange account, as its assets are (Dagster infers it from them).
    description="One reconciliation cycle for one exchange account: start it (no overlap, stale "
                "reconciling gates restored), snapshot the database and the exchange, diff them, "
                "find the exit fills that prove unrecorded exits (EXIT backfill, GO / NO_GO), "
                "and check the parity of every open slice (the heartbeat).",
    tags={**RETRY_ALL_STEPS, MAX_RUNTIME_TAG: str(CYCLE_DEADLINE_SECONDS)},
)


def _account_load(instance: dg.DagsterInstance, account: str) -> AccountLoad:
    """What the last measured cycle of `account` spent, from its exchange snapshot's metadata."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("exchange_positions"), asset_partitions=[account]),
        limit=1).records
    if not records:
        return AccountLoad(account, "default", None)  # its egress's budget: the others' say
    metadata = records[0].asset_materialization.metadata

    def value(name, default):
        entry = metadata.get(name)
        return entry.value if entry is not None else default

    return AccountLoad(account, str(value("egress", "default")),
                       int(value("egress_weight_limit", WEIGHT_LIMIT_PER_MINUTE)),
                       value("request_weight", None), int(records[0].timestamp * 1000))


def _accounts_to_cycle(context: dg.ScheduleEvaluationContext) -> tuple[list[str], str | None]:
    """The accounts whose cycle this tick requests, longest waiting first, and why the others
    wait (None when none does): an account whose previous cycle is still queued or running
    (its own run or a shard run holding it) waits, and so does one whose egress's request
    weight budget the others take this tick."""
    accounts = context.instance.get_dynamic_partitions(exchange_account_partitions.name)
    held = pending_shard_accounts(context.instance, SHARD_JOB)
    ready, busy = [], []
    for account in sorted(accounts):
        waiting = pending_runs(context.instance, reconciliation_cycle_job.name, account)
        waiting += [held[account]] if account in held else []
        if waiting:  # one cycle per account in the queue: no pile-up behind a slow one
            busy.append(f"{account} ({', '.join(waiting)})")
            continue
        ready.append(_account_load(context.instance, account))
    run, deferred = spread_cycles(ready)
    if busy:
        context.log.info(f"skipped, a cycle is still queued or running: {'; '.join(busy)}")
    spread = "; ".join(f"egress {egress}: {', '.join(names)}" for egress, names in deferred.items())
    if spread:
        context.log.info("deferred to the next tick, their egress's request-weight budget is "
                         f"taken by the cycles of this one: {spread}")
    if run:
        return run, None
    return [], ("no account to reconcile" if not busy else
                f"every account's previous cycle is still queued or running: {'; '.join(busy)}")


def cycle_schedule(cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(job=reconciliation_cycle_job, cron_schedule=cron, name="reconciliation_cycle_schedule",
                 default_status=dg.DefaultScheduleStatus.RUNNING,
                 description="Runs the reconciliation cycle for every exchange account, one run "
                             "each (RECON_CYCLE_SHARD_SIZE=1, the default), except an account "
                             "whose previous cycle is still queued or running; when the cycles "
                             "of one egress would not fit its request-weight budget, the longest "
                             "waiting run now and the others at the next tick.")
    def _schedule(context: dg.ScheduleEvaluationContext, settings: ReconSettings):
        if settings.cycle_shard_size > 1:
            return dg.SkipReason(f"RECON_CYCLE_SHARD_SIZE={settings.cycle_shard_size}: the "
                                 "cycles run in shard runs (reconciliation_shard_schedule)")
        accounts, why_not = _accounts_to_cycle(context)
        if not accounts:
            return dg.SkipReason(why_not)
        tick = context.scheduled_execution_time.isoformat()
        return [dg.RunRequest(run_key=f"{account}:{tick}", partition_key=account,
                              tags={"recon/account": account}) for account in accounts]

    return _schedule


def shard_schedule(cron: str) -> dg.ScheduleDefinition:
    @dg.schedule(job=reconciliation_shard_job, cron_schedule=cron,
                 name="reconciliation_shard_schedule",
                 default_status=dg.DefaultScheduleStatus.RUNNING,
                 description="When RECON_CYCLE_SHARD_SIZE is above 1: the same accounts as "
                             "reconciliation_cycle_schedule would cycle, cut into shard runs of "
                             "that many accounts (one process each, each account's cycle its "
                             "own run).")
    def _schedule(context: dg.ScheduleEvaluationContext, settings: ReconSettings):
        size = settings.cycle_shard_size
        if size == 1:
            return dg.SkipReason("RECON_CYCLE_SHARD_SIZE=1: one run per account "
                                 "(reconciliation_cycle_schedule)")
        accounts, why_not = _accounts_to_cycle(context)
        if not accounts:
            return dg.SkipReason(why_not)
        tick = context.scheduled_execution_time.isoformat()
        return [dg.RunRequest(run_key=f"shard:{tick}:{shard[0]}",
                              run_config={"ops": {SHARD_OP: {"config": {"accounts": shard}}}},
                              tags={"recon/shard": shard[0], "recon/shard_size": str(len(shard))})
                for shard in account_shards(accounts, size)]

    return _schedule


@dg.run_failure_sensor(monitored_jobs=[reconciliation_cycle_job],
                       default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Records a failed reconciliation cycle in recon.cycles, so "
                                   "/internal/health reports the loop unhealthy (a run "
                                   "interrupted by a shutdown or restart is not a failure).")
def failed_cycle_sensor(context: dg.RunFailureSensorContext, database: TradingStore):
    run = context.dagster_run
    account = run.tags.get("dagster/partition")
    if not account:
        return
    message = context.failure_event.message or "reconciliation cycle failed"
    data = context.failure_event.event_specific_data
    reason = getattr(getattr(data, "failure_reason", None), "value", None) or \
        run.tags.get("dagster/failure_reason")
    if interrupted(reason, message):
        context.log.info(f"cycle {run.run_id} of {account} was interrupted ({reason or message}), "
                         "not failed: not recorded; the next cycle runs it again")
        return
    store = ReconStore(database)
    record = context.instance.get_run_record_by_id(run.run_id)
    started = record.start_time if record is not None else None
    created = store.created_at()
    if started is not None and created is not None and started < created.timestamp():
        context.log.info(f"cycle {run.run_id} of {account} started before this database was "
                         "created (re-seeded since): superseded, not recorded")
        return
    store.record_failed_cycle(cycle_id_of(run), account, message)


def defs(cron: str = "* * * * *") -> dg.Definitions:
    return dg.Definitions(
        assets=[reconciliation_diff, reconciliation_summary],
        jobs=[reconciliation_cycle_job, reconciliation_shard_job],
        schedules=[cycle_schedule(cron), shard_schedule(cron)],
        sensors=[failed_cycle_sensor, reconciliation_summary_sensor],
    )
