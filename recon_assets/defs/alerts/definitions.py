import dagster as dg

from recon_assets.defs.alerts.sensors import escalation_sensor


def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[escalation_sensor])
