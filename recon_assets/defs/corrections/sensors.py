"""Launches the lifecycle correction job for each profile a new diff found actionable."""

import dagster as dg

from recon_assets.core.rules import ACTIONABLE_KINDS
from recon_assets.defs.corrections.ops import lifecycle_correction
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.recon_store import ReconStore

DIFF_KEY = dg.AssetKey("reconciliation_diff")


def correction_run_requests(database: PostgresStore, cycle_id: str, account: str) -> list[dg.RunRequest]:
    """One run per profile with actionable mismatches in the cycle; the run key makes a cycle's
    profile launch once, however often the sensor sees the event."""
    profiles = ReconStore(database).profiles_with_mismatches(cycle_id, account, ACTIONABLE_KINDS)
    return [dg.RunRequest(
        run_key=f"{cycle_id}:{profile}",
        run_config={"ops": {"correct_profile": {"config": {"profile_id": profile, "cycle_id": cycle_id}}}},
        tags={"recon/profile": profile, "recon/account": account, "recon/cycle": cycle_id})
        for profile in profiles]


@dg.sensor(job=lifecycle_correction, minimum_interval_seconds=15,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="On each new reconciliation_diff materialization, launches the lifecycle "
                       "correction job for every profile with orders missing from the exchange.")
def lifecycle_correction_sensor(context: dg.SensorEvaluationContext, database: PostgresStore):
    after = int(context.cursor) if context.cursor else None
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DIFF_KEY, after_storage_id=after), limit=100, ascending=True)
    requests: list[dg.RunRequest] = []
    last = after
    for record in result.records:
        event = record.event_log_entry
        account = event.dagster_event.partition
        if account:
            requests += correction_run_requests(database, event.run_id, account)
        last = record.storage_id
    if last is None:
        return dg.SkipReason("no reconciliation_diff materialization yet")
    return dg.SensorResult(run_requests=requests, cursor=str(last))
