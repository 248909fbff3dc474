"""Launches the lifecycle correction job for each profile a new diff found actionable, and
escalates a correction run that failed."""

import dagster as dg

from recon_assets.core.corrections import retry_after_refusals
from recon_assets.core.escalation import failed_correction_run
from recon_assets.core.rules import ACTIONABLE_KINDS
from recon_assets.defs.corrections.ops import lifecycle_correction
from recon_assets.defs.partitions import profile_partitions
from recon_assets.resources.alerts import AlertWebhook, raise_alert
from recon_assets.resources.database import TradingStore
from recon_assets.resources.recon_store import ReconStore
from recon_assets.defs.runs import cycle_id_of_run

DIFF_KEY = dg.AssetKey("reconciliation_diff")


def correction_run_requests(database: TradingStore, cycle_id: str, account: str,
                            log=None) -> list[dg.RunRequest]:
    """One run per profile with actionable mismatches in the cycle, as that profile's partition;
    the run key makes a cycle's profile launch once, however often the sensor sees the event. A
    profile whose corrections keep being refused waits (`retry_after_refusals`)."""
    store = ReconStore(database)
    profiles = []
    for profile in store.profiles_with_mismatches(cycle_id, account, ACTIONABLE_KINDS):
        streak = store.refusal_streak(profile)
        until = retry_after_refusals(streak["refusals"], streak["last_refused_at"])
        if until is not None and streak["now"] < until:
            if log is not None:
                log.info(f"{profile}: its last {streak['refusals']} corrections were refused; "
                         f"not corrected from cycle {cycle_id}, next try after "
                         f"{until.isoformat()}")
            continue
        profiles.append(profile)
    return [dg.RunRequest(
        run_key=f"{cycle_id}:{profile}", partition_key=profile,
        run_config={"ops": {"correct_profile": {"config": {"profile_id": profile, "cycle_id": cycle_id}}}},
        # No recon/account tag: that one limits cycles, one per account.
        tags={"recon/profile": profile, "recon/cycle": cycle_id})
        for profile in profiles]


@dg.sensor(job=lifecycle_correction, minimum_interval_seconds=15,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="On each new reconciliation_diff materialization, launches the lifecycle "
                       "correction job for every profile with orders missing from the exchange.")
def lifecycle_correction_sensor(context: dg.SensorEvaluationContext, database: TradingStore):
    after = int(context.cursor) if context.cursor else None
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DIFF_KEY, after_storage_id=after), limit=100, ascending=True)
    requests: list[dg.RunRequest] = []
    last = after
    for record in result.records:
        event = record.event_log_entry
        account = event.dagster_event.partition
        if account:
            requests += correction_run_requests(
                database, cycle_id_of_run(context.instance, event.run_id), account, context.log)
        last = record.storage_id
    if last is None:
        return dg.SkipReason("no reconciliation_diff materialization yet")
    # A profile added since the partitions sensor last ran gets its partition in the same tick.
    known = set(context.instance.get_dynamic_partitions(profile_partitions.name))
    new = sorted({r.partition_key for r in requests} - known)
    return dg.SensorResult(
        run_requests=requests, cursor=str(last),
        dynamic_partitions_requests=[profile_partitions.build_add_request(new)] if new else [])


@dg.run_failure_sensor(monitored_jobs=[lifecycle_correction],
                       default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Escalates a lifecycle correction run that failed as a whole "
                                   "(stale evidence, a busy gate or lock, an unexpected error).")
def failed_correction_run_sensor(context: dg.RunFailureSensorContext, database: TradingStore,
                                 alert_webhook: AlertWebhook):
    run = context.dagster_run
    profile = run.tags.get("recon/profile") or run.tags.get("dagster/partition")
    message = context.failure_event.message or "lifecycle correction run failed"
    for event in context.get_step_failure_events():
        error = event.event_specific_data.error if event.event_specific_data else None
        while error is not None and error.cause is not None:  # the op's own error, not the wrapper
            error = error.cause
        if error is not None:
            message = error.message.strip()
            break
    raise_alert(database, alert_webhook, failed_correction_run(run.run_id, profile, message))
