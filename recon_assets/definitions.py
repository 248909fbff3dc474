"""The recon-assets code location: each domain's definitions, plus the shared resources.

Loaded lazily through `@definitions`, so the runbook flags are read and checked when the code
location loads, not when this module is imported. A domain is a folder under `defs/` whose
`definitions.py` has a `defs()` function; every such folder is loaded (`domains()` finds them),
so a new domain needs no list to be edited and none can be left out.
"""

import importlib
import json
import os
import pkgutil

import dagster as dg

from recon_assets.resources.alerts import AlertWebhook
from recon_assets.resources.database import PostgresStore, TradingStore
from recon_assets.resources.exchange import ExchangeResource, exchange_settings_from_env
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets.resources.supabase_store import SupabaseStore
from recon_assets.settings import ReconSettings, SettingsError



def domains() -> list[str]:
    """The folders under `defs/` (packages), in name order; each must have `definitions.defs()`."""
    import recon_assets.defs

    return sorted(m.name for m in pkgutil.iter_modules(recon_assets.defs.__path__) if m.ispkg)


def check_exchange_credentials() -> None:
    """A deployment (RECON_DATABASE_URL or RECON_SUPABASE_URL set) without usable RECON_EXCHANGE_CREDENTIALS fails at
    load, naming the variable (never its value), instead of every cycle failing at its tick. With
    nothing set the code location still loads, so `dagster dev` and `dagster definitions
    validate` work in a fresh clone."""
    if not (os.environ.get("RECON_DATABASE_URL") or os.environ.get("RECON_SUPABASE_URL")):
        return
    expected = '{"<account>": {"apiKey": "...", "secret": "..."}}'
    raw = os.environ.get("RECON_EXCHANGE_CREDENTIALS")
    if not raw:
        raise SettingsError("RECON_EXCHANGE_CREDENTIALS is not set: the exchange accounts' keys "
                            f"are needed, as JSON {expected}")
    try:
        data = json.loads(raw)
    except ValueError:
        raise SettingsError(f"RECON_EXCHANGE_CREDENTIALS is not valid JSON; expected {expected}") from None
    bad = sorted(str(a) for a, c in data.items()
                 if not (isinstance(c, dict) and c.get("apiKey") and c.get("secret"))) \
        if isinstance(data, dict) else None
    if not data or bad is None or bad:
        raise SettingsError("RECON_EXCHANGE_CREDENTIALS must map each exchange account to its "
                            f"apiKey and secret ({expected})"
                            + (f"; not so for: {', '.join(bad)}" if bad else ""))


SUPABASE_VARIABLES = ("RECON_SUPABASE_URL", "RECON_SUPABASE_SERVICE_ROLE_KEY")


def trading_database() -> TradingStore:
    """The trading database's store, from the configuration: `RECON_DATABASE_URL` (psycopg:
    Supabase's direct connection or session pooler, or any Postgres), or `RECON_SUPABASE_URL` +
    `RECON_SUPABASE_SERVICE_ROLE_KEY` (supabase-py through the Data API). Both, or half of the
    Supabase pair, is an error naming the variables (never their values): nothing falls back
    from one path to the other. With none set, the psycopg store (its variable is read when a
    run uses it), so the code location still loads in a fresh clone."""
    supabase = [name for name in SUPABASE_VARIABLES if os.environ.get(name)]
    if supabase and os.environ.get("RECON_DATABASE_URL"):
        raise SettingsError("set either RECON_DATABASE_URL (Postgres) or RECON_SUPABASE_URL and "
                            "RECON_SUPABASE_SERVICE_ROLE_KEY (the Supabase Data API), not both")
    if supabase:
        missing = [name for name in SUPABASE_VARIABLES if name not in supabase]
        if missing:
            raise SettingsError(f"{missing[0]} is not set: the Supabase Data API path needs "
                                "both RECON_SUPABASE_URL and RECON_SUPABASE_SERVICE_ROLE_KEY")
        return SupabaseStore(url=dg.EnvVar("RECON_SUPABASE_URL"),
                             service_key=dg.EnvVar("RECON_SUPABASE_SERVICE_ROLE_KEY"))
    return PostgresStore(dsn=dg.EnvVar("RECON_DATABASE_URL"))


def shared_resources() -> dict:
    check_exchange_credentials()
    store = trading_database()
    return {
        "settings": ReconSettings.from_env(),
        "database": store,
        "io_manager": PostgresFrameIOManager(database=store),
        # Optional secret: only referenced (never read) when the variable is set.
        "alert_webhook": AlertWebhook(url=dg.EnvVar("RECON_ALERT_WEBHOOK_URL"))
        if "RECON_ALERT_WEBHOOK_URL" in os.environ else AlertWebhook(),
        # Credentials JSON {account: {apiKey, secret}}; the base URL only for the simulator.
        # Every other field from RECON_EXCHANGE_<FIELD> when set (docs/configuration.md).
        "exchange": ExchangeResource(
            credentials=dg.EnvVar("RECON_EXCHANGE_CREDENTIALS"),
            **exchange_settings_from_env(os.environ),
            **({"api_base_url": dg.EnvVar("RECON_EXCHANGE_API_BASE_URL")}
               if "RECON_EXCHANGE_API_BASE_URL" in os.environ else {})),
    }


def build_defs(resources: dict) -> dg.Definitions:
    """Every domain's definitions bound to `resources` (tests and the demo pass their own)."""
    domain_defs = [importlib.import_module(f"recon_assets.defs.{name}.definitions").defs()
                   for name in domains()]
    # Every job runs its steps in the run's own process: a step in a process of its own would
    # import dagster, ccxt, pandas and duckdb again (about 4.5 s of CPU here) for work of
    # milliseconds, which is what made cycles take a minute on a loaded machine (issue 16).
    return dg.Definitions.merge(*domain_defs, dg.Definitions(resources=resources,
                                                             executor=dg.in_process_executor))


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(shared_resources())
