import dagster as dg

from recon_assets.defs.trading_gate.ops import pause_profile, resume_profile


def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[pause_profile, resume_profile])
