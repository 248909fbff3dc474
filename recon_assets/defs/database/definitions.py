import dagster as dg

from recon_assets.defs.database.assets import cycle_start, db_snapshot, partitions_sensor


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[cycle_start, db_snapshot], sensors=[partitions_sensor])
