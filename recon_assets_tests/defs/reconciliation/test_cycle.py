"""A whole reconciliation cycle, end to end: the simulator (real ccxt over HTTP), the real
PostgreSQL, and real Dagster execution of the cycle job's assets, for every divergence scenario."""

import json
from collections import Counter

import dagster as dg
import psycopg
import pytest

from recon_assets.demo import local_resources
from recon_assets.defs.database.assets import db_snapshot
from recon_assets.defs.exchange.assets import exchange_snapshot
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.defs.reconciliation.assets import reconciliation_diff
from recon_assets.settings import ReconSettings
from recon_assets.simulator.scenarios import SCENARIOS
from recon_assets_tests.harness.exchange import FAST_RETRIES

pytestmark = pytest.mark.integration


CYCLE_ASSETS = [db_snapshot, exchange_snapshot, reconciliation_diff]


def run_cycle(instance, sim, dsn, account):
    """Materialize one cycle's assets for one account, as the reconciliation_cycle job does."""
    resources = local_resources(dsn, sim, ReconSettings(), **FAST_RETRIES)
    return dg.materialize(CYCLE_ASSETS, partition_key=account, instance=instance, resources=resources)


def _key(row):
    """A finding's identity, whether it is a scenario's expectation or a diff row."""
    return (row["kind"], row.get("account") or row["exchange_account"], row["symbol"],
            row.get("client_order_id") or row.get("trade_id"))


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "systemic_glitch"])
def test_cycle_finds_exactly_the_scenarios_divergences(scenario, sim, pg_dsn):
    plan = sim.load_scenario(scenario)
    plan.seed_database(pg_dsn)
    found = []
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, plan.accounts())
        for account in plan.accounts():
            result = run_cycle(instance, sim, pg_dsn, account)
            assert result.success
            diff = result.output_for_node("reconciliation_diff")
            found += diff.to_dict("records")
            mat = result.asset_materializations_for_node("reconciliation_diff")[0]
            assert mat.metadata["reconciliationMismatchCount"].value == len(diff)
            assert mat.metadata["cycle_id"].value == result.run_id
    expected = Counter(_key(e) for e in plan.expected)
    got = Counter(_key(f) for f in found)
    assert got == expected
    # Every finding is appended to the analysts' history with its cycle (run) id.
    with psycopg.connect(pg_dsn) as conn:
        (recorded,) = conn.execute("SELECT count(*) FROM recon.mismatches").fetchone()
        statuses = conn.execute("SELECT DISTINCT status FROM recon.cycles").fetchall()
    assert recorded == len(found)
    assert statuses == [("succeeded",)]


def test_health_and_metrics_report_the_cycle_with_the_runbook_names(sim, pg_dsn):
    import threading
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from recon_assets.metrics.server import make_server

    plan = sim.load_scenario("demo")
    plan.seed_database(pg_dsn)
    rows = []
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, plan.accounts())
        for account in plan.accounts():
            rows += run_cycle(instance, sim, pg_dsn, account).output_for_node(
                "reconciliation_diff").to_dict("records")
    kinds = Counter(r["kind"] for r in rows)
    ghosts = [r for r in rows if r["kind"] == "ghost_slice"]

    server = make_server(pg_dsn, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        health = json.loads(urllib.request.urlopen(f"{base}/internal/health", timeout=10).read())
        metrics_text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    assert health["reconciliationLoopHealthy"] is True
    assert health["reconciliationMismatchCount"] == len(rows)
    assert health["reconciliationMissingFromExchange"] == kinds["missing_from_exchange"]
    assert health["reconciliationMissingInDb"] == kinds["missing_in_db"]
    assert health["reconciliationParityMismatchTrades"] == len({r["trade_id"] for r in ghosts})
    assert health["reconciliationParityTotalMismatchNotionalUsd"] == pytest.approx(
        sum(r["notional_usd"] for r in ghosts))
    assert health["reconciliationParityMaxMismatchNotionalUsd"] == pytest.approx(
        max(r["notional_usd"] for r in ghosts))
    samples = {s.name: s.value for family in text_string_to_metric_families(metrics_text)
               for s in family.samples if not s.labels}
    assert samples["reconciliation_mismatch_total"] == len(rows)
    assert samples["reconciliation_missing_from_exchange_total"] == kinds["missing_from_exchange"]
    assert samples["reconciliation_missing_in_db_total"] == kinds["missing_in_db"]
    assert samples["reconciliation_parity_mismatch_trades"] == len({r["trade_id"] for r in ghosts})
