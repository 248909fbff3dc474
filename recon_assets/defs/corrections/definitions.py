import dagster as dg

from recon_assets.defs.corrections.ops import lifecycle_correction
from recon_assets.defs.corrections.sensors import (failed_correction_run_sensor,
                                                   lifecycle_correction_sensor)


def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[lifecycle_correction],
                          sensors=[lifecycle_correction_sensor, failed_correction_run_sensor])
