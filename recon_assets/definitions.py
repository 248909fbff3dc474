"""The recon-assets code location: each domain's definitions, plus the shared resources.

Loaded lazily through `@definitions`, so the runbook flags are read and checked when the code
location loads, not when this module is imported.
"""

import dagster as dg

from recon_assets.defs.database import assets as database_assets
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets.settings import ReconSettings


def shared_resources() -> dict:
    store = PostgresStore(dsn=dg.EnvVar("RECON_DATABASE_URL"))
    return {
        "settings": ReconSettings.from_env(),
        "database": store,
        "io_manager": PostgresFrameIOManager(database=store),
    }


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        database_assets.defs(),
        dg.Definitions(resources=shared_resources()),
    )
