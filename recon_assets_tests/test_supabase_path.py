"""The whole code location over the Supabase Data API (issue 17): the demo's flow (the scheduled
cycle of every account, the summary sensor, the lifecycle corrections and the EXIT backfill,
a second cycle, the health state) run once with the psycopg store and once with `SupabaseStore`
(supabase-py over real HTTP to the PostgREST stand-in, each call as the service key's role, on
its own copy of the same database), each against its own simulator with the demo scenario. The
trading tables and every `recon.*` table must end the same, less what differs between any two
runs (timestamps, ids, run and cycle ids)."""

import random
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from recon_assets.demo import DemoStack, local_resources, run_once
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets.resources.supabase_store import SupabaseStore
from recon_assets.simulator.server import SimulatorServer
from recon_assets_tests.harness.postgrest_standin import PostgrestStandIn
from recon_assets_tests.harness.tables import difference, normal, table_differences, table_rows

pytestmark = pytest.mark.integration

SERVICE_KEY = "test-service-role-key-supabase-path"
NAMES = ("psycopg", "the Data API")


def _flow(base: Path, dsn: str, supabase_url: str | None) -> dict:
    # The scenario names foreign orders like Binance's web UI, with random suffixes: the same
    # seed gives both runs the same names.
    random.seed(17)
    sim = SimulatorServer(port=0, scenario="demo")
    sim.start()
    try:
        sim.scenario.seed_database(dsn)
        resources = local_resources(dsn, sim)
        if supabase_url:
            store = SupabaseStore(url=supabase_url, service_key=SERVICE_KEY)
            resources = {**resources, "database": store,
                         "io_manager": PostgresFrameIOManager(database=store)}
        return run_once(DemoStack(base, sim=sim), resources)
    finally:
        sim.stop()


def test_the_demo_flow_ends_the_same_over_the_data_api_as_over_postgres(pg_server,
                                                                         template_copies):
    names = [template_copies.take(), template_copies.take()]
    base = Path(tempfile.mkdtemp(prefix="recon-supabase-path-"))
    try:
        over_postgres_dsn, over_supabase_dsn = (pg_server.dsn(n) for n in names)
        over_postgres = _flow(base / "postgres", over_postgres_dsn, None)
        with PostgrestStandIn(over_supabase_dsn, SERVICE_KEY, switch_roles=True) as standin:
            over_supabase = _flow(base / "supabase", over_supabase_dsn, standin.url)
            served = standin.requests_served
        assert served > 100  # the flow went through the Data API, not around it

        # The flow did something worth comparing: drift found, corrections applied.
        assert any(c["by_kind"] for c in over_postgres["cycles"])
        assert [c["status"] for c in over_postgres["corrections"]].count("applied") >= 1
        for key in ("cycles", "corrections", "backfills"):
            assert difference(normal(over_postgres[key]), normal(over_supabase[key]),
                              names=NAMES) is None

        def health(summary: dict) -> dict:
            h = summary["health"]
            return {k: v for k, v in h.items() if k not in ("checkedAt", "reconciliationLastRun",
                                                             "accounts", "profiles")}
        assert health(over_supabase) == health(over_postgres)

        postgres_tables = table_rows(over_postgres_dsn)
        supabase_tables = table_rows(over_supabase_dsn)
        assert postgres_tables.keys() == supabase_tables.keys()
        differing = table_differences(postgres_tables, supabase_tables, NAMES)
        assert not differing, "\n".join(f"{t}: {d}" for t, d in differing.items())
        assert postgres_tables["recon.corrections"] and postgres_tables["recon.mismatches"]
    finally:
        for name in names:
            pg_server.drop_database(name)
        shutil.rmtree(base, ignore_errors=True)
