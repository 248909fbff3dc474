import dagster as dg

from recon_assets.defs.backfill.assets import exit_backfill_candidates
from recon_assets.defs.backfill.ops import approve_backfill, exit_backfill, reject_backfill
from recon_assets.defs.backfill.sensors import exit_backfill_sensor


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[exit_backfill_candidates],
                          jobs=[exit_backfill, approve_backfill, reject_backfill],
                          sensors=[exit_backfill_sensor])
