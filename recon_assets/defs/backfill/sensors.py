"""Launches the exit_backfill job for each profile a new cycle's EXIT backfill has GO fills for."""

import dagster as dg

from recon_assets.core.rules import GO
from recon_assets.defs.apply import decisions_sensor
from recon_assets.defs.backfill.ops import exit_backfill
from recon_assets.resources.backfill_store import BackfillStore

exit_backfill_sensor: dg.SensorDefinition = decisions_sensor(
    name="exit_backfill_sensor", asset="exit_backfill_candidates", job=exit_backfill,
    op_name="apply_exit_backfill",
    profiles=lambda database, cycle_id, account: BackfillStore(database)
    .profiles_with_decision(cycle_id, account, GO),
    description="On each new exit_backfill_candidates materialization, launches exit_backfill "
                "for every profile with GO exit fills.")
