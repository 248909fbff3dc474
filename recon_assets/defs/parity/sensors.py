"""Launches the position_parity job for each profile a new heartbeat decided to close a slice of."""

import dagster as dg

from recon_assets.core.rules import SYNTHETIC_EXIT
from recon_assets.defs.apply import decisions_sensor
from recon_assets.defs.parity.ops import position_parity
from recon_assets.resources.recon_store import ReconStore

position_parity_sensor: dg.SensorDefinition = decisions_sensor(
    name="position_parity_sensor", asset="position_parity_heartbeat", job=position_parity,
    op_name="apply_parity",
    profiles=lambda database, cycle_id, account: ReconStore(database)
    .profiles_with_parity_decision(cycle_id, account, SYNTHETIC_EXIT),
    description="On each new position_parity_heartbeat materialization, launches "
                "position_parity for every profile with a synthetic exit decided.")
