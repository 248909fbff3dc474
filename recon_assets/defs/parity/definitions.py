import dagster as dg

from recon_assets.defs.parity.assets import position_parity_heartbeat
from recon_assets.defs.parity.checks import integrity_watchdog, watchdog_auto_resume
from recon_assets.defs.parity.ops import position_parity, resolve_quarantine
from recon_assets.defs.parity.sensors import position_parity_sensor


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[position_parity_heartbeat],
                          asset_checks=[integrity_watchdog, watchdog_auto_resume],
                          jobs=[position_parity, resolve_quarantine],
                          sensors=[position_parity_sensor])
