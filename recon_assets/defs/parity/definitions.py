import dagster as dg

from recon_assets.defs.parity.assets import position_parity_heartbeat
from recon_assets.defs.parity.ops import position_parity, resolve_quarantine
from recon_assets.defs.parity.sensors import position_parity_sensor


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[position_parity_heartbeat],
                          jobs=[position_parity, resolve_quarantine],
                          sensors=[position_parity_sensor])
