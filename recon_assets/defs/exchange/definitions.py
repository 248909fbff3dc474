import dagster as dg

from recon_assets.defs.exchange.assets import exchange_snapshot


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[exchange_snapshot])
