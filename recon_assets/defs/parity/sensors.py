"""Launches the position_parity job for each profile a new heartbeat decided to close a slice of."""

import dagster as dg

from recon_assets.core.rules import SYNTHETIC_EXIT
from recon_assets.defs.parity.ops import position_parity
from recon_assets.defs.partitions import profile_partitions
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.recon_store import ReconStore

HEARTBEAT_KEY = dg.AssetKey("position_parity_heartbeat")


@dg.sensor(job=position_parity, minimum_interval_seconds=15,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="On each new position_parity_heartbeat materialization, launches "
                       "position_parity for every profile with a synthetic exit decided.")
def position_parity_sensor(context: dg.SensorEvaluationContext, database: PostgresStore):
    after = int(context.cursor) if context.cursor else None
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=HEARTBEAT_KEY, after_storage_id=after), limit=100,
        ascending=True)
    requests: list[dg.RunRequest] = []
    last = after
    store = ReconStore(database)
    for record in result.records:
        event = record.event_log_entry
        account, cycle_id = event.dagster_event.partition, event.run_id
        if account:
            for profile in store.profiles_with_parity_decision(cycle_id, account, SYNTHETIC_EXIT):
                requests.append(dg.RunRequest(
                    run_key=f"parity:{cycle_id}:{profile}", partition_key=profile,
                    run_config={"ops": {"apply_parity": {"config": {
                        "profile_id": profile, "cycle_id": cycle_id}}}},
                    tags={"recon/profile": profile, "recon/cycle": cycle_id}))
        last = record.storage_id
    if last is None:
        return dg.SkipReason("no position_parity_heartbeat materialization yet")
    known = set(context.instance.get_dynamic_partitions(profile_partitions.name))
    new = sorted({r.partition_key for r in requests} - known)
    return dg.SensorResult(
        run_requests=requests, cursor=str(last),
        dynamic_partitions_requests=[profile_partitions.build_add_request(new)] if new else [])
