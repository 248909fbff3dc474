"""The whole code location over the Supabase Data API (issue 17): the demo's flow (the scheduled
cycle of every account, the summary sensor, the lifecycle corrections and the EXIT backfill,
a second cycle, the health state) run once with the psycopg store and once with `SupabaseStore`
(supabase-py over real HTTP to the PostgREST stand-in, each call as the service key's role, on
its own copy of the same database), each against its own simulator with the demo scenario. The
trading tables and every `recon.*` table must end the same, less what differs between any two
runs (timestamps, ids, run and cycle ids)."""

import json
import random
import re
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

pytestmark = pytest.mark.integration

SERVICE_KEY = "test-service-role-key-supabase-path"
# What differs between two runs of the same flow: when, and the ids Dagster and sequences give.
IGNORED_EXACT = {"id", "at", "payload", "idempotency_key", "evidence", "details", "owner",
                 "activity_key"}
IGNORED_PARTS = ("_at", "_ms", "cycle", "run")
# Shared or clock-driven state, not the outcome of the flow.
SKIPPED_TABLES = {"recon.schema_migrations", "recon.asset_values", "recon.exchange_weight_budget",
                  "recon.exchange_clock", "recon.exchange_markets"}


# Binance names a liquidation's order after its time (autoclose-<ms>-...): the scenario's clock.
_CLOCK_IN_IDS = re.compile(r"autoclose-\d+")
# Dagster's run ids (a cycle's id is its run's) inside keys and messages.
_RUN_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Times inside messages (e.g. when a minimum pause ends).
_TIMES = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00")


def _normal(value):
    """`value` (JSON-like) with the clock in order ids, the run ids and the times masked."""
    text = _CLOCK_IN_IDS.sub("autoclose-<ms>", json.dumps(value, sort_keys=True))
    return json.loads(_TIMES.sub("<time>", _RUN_IDS.sub("<run>", text)))


def _kept(column: str) -> bool:
    return column not in IGNORED_EXACT and not any(p in column for p in IGNORED_PARTS)


def _tables(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as conn:
        names = [f"{s}.{t}" for s, t in conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('public', 'recon') AND table_type = 'BASE TABLE' "
            "ORDER BY 1, 2").fetchall()]
        out = {}
        for name in names:
            if name in SKIPPED_TABLES:
                continue
            rows = conn.execute(f"SELECT to_jsonb(t) FROM {name} t").fetchall()
            out[name] = sorted(json.dumps(_normal({k: v for k, v in row[0].items() if _kept(k)}),
                                          sort_keys=True) for row in rows)
        return out


def _difference(a, b, path="") -> str | None:
    """Where two JSON-like values first differ (a readable assertion message), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _difference(a.get(key), b.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items over psycopg, {len(b)} over the Data API"
        for i, (x, y) in enumerate(zip(a, b)):
            found = _difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} over psycopg, {b!r} over the Data API"


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
            assert _difference(_normal(over_postgres[key]), _normal(over_supabase[key])) is None

        def health(summary: dict) -> dict:
            h = summary["health"]
            return {k: v for k, v in h.items() if k not in ("checkedAt", "reconciliationLastRun",
                                                             "accounts", "profiles")}
        assert health(over_supabase) == health(over_postgres)

        postgres_tables, supabase_tables = _tables(over_postgres_dsn), _tables(over_supabase_dsn)
        assert postgres_tables.keys() == supabase_tables.keys()
        differing = {t: _difference(postgres_tables[t], rows)
                     for t, rows in supabase_tables.items() if rows != postgres_tables[t]}
        assert not differing, "\n".join(f"{t}: {d}" for t, d in differing.items())
        assert postgres_tables["recon.corrections"] and postgres_tables["recon.mismatches"]
    finally:
        for name in names:
            pg_server.drop_database(name)
        shutil.rmtree(base, ignore_errors=True)
