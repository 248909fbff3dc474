"""The fault matrix: for each fault the simulator injects, the snapshot either succeeds after a
retry or fails loudly, and nothing empty or partial is ever persisted (checked in the real
Postgres, in recon.asset_values and the fill cursors)."""

import json

import dagster as dg
import psycopg
import pytest

from recon_assets.defs.exchange.assets import SNAPSHOT_ASSETS, exchange_snapshot
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.exchange import ExchangeResource
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets.simulator import SimulatorServer
from recon_assets_tests.harness.exchange import running_simulator

pytestmark = pytest.mark.integration

OPEN_ORDERS, POSITIONS, TRADES = "/fapi/v1/openOrders", "/fapi/v3/positionRisk", "/fapi/v1/userTrades"

# (name, fault, None when the snapshot must succeed after retry, else a text the error names)
MATRIX = [
    ("latency", dict(kind="latency", path=POSITIONS, delay_ms=300), None),
    ("429 once, Retry-After honoured", dict(kind="rate_limit", path=OPEN_ORDERS, retry_after_s=1), None),
    ("429 until cleared", dict(kind="rate_limit", path=OPEN_ORDERS, retry_after_s=0, count=None),
     "after 4 attempts"),
    ("418 ban longer than allowed", dict(kind="ban", path=OPEN_ORDERS, retry_after_s=600),
     "asked to wait 600 s"),
    ("500 html once", dict(kind="server_error", path=POSITIONS, status=500), None),
    ("503 Binance -1001 twice", dict(kind="server_error", status=503, json=True, count=2), None),
    ("502 until cleared", dict(kind="server_error", status=502, count=None), "after 4 attempts"),
    ("504 on fills once", dict(kind="server_error", path=TRADES, status=504), None),
    ("dropped connection", dict(kind="drop", path=TRADES), None),
    ("dropped connection on positions", dict(kind="drop", path=POSITIONS), None),
    ("truncated body", dict(kind="truncated", path=POSITIONS), None),
    ("malformed JSON", dict(kind="malformed_json", path=OPEN_ORDERS), "not valid JSON"),
    ("stale once", dict(kind="stale", path=POSITIONS, age_s=300), None),
    ("stale until cleared", dict(kind="stale", path=POSITIONS, age_s=300, count=None), "s old"),
    # Every open-orders answer (they are read per symbol; some symbols have none to corrupt).
    ("bad origQty", dict(kind="bad_field", path=OPEN_ORDERS, field="origQty", value="abc", count=None),
     "'origQty'"),
    ("missing positionAmt", dict(kind="bad_field", path=POSITIONS, field="positionAmt"), "'positionAmt'"),
    ("unknown position side", dict(kind="bad_field", path=POSITIONS, field="positionSide",
                                   value="SIDEWAYS"), "'positionSide'"),
    ("null fill price", dict(kind="bad_field", path=TRADES, field="price", value=None), "'price'"),
    ("fill id as text", dict(kind="bad_field", path=TRADES, field="id", value="x1"), "'id'"),
    ("unknown symbol", dict(kind="bad_field", path=OPEN_ORDERS, field="symbol", value="FOOUSDT",
                            count=None), "'symbol'"),
    ("no markets", dict(kind="empty", path="/fapi/v1/exchangeInfo"), "'symbols' is empty"),
]


@pytest.fixture
def sim():
    with running_simulator("demo") as server:
        yield server


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(exchange_account_partitions.name, ["acct1", "acct2"])
        yield inst


def _resources(sim, dsn, credentials=None):
    store = PostgresStore(dsn=dsn)
    exchange = ExchangeResource(credentials=json.dumps(credentials or sim.credentials()),
                                api_base_url=sim.url, enable_rate_limit=False,
                                backoff_initial_s=0.02, backoff_max_s=0.1, max_retry_after_s=5)
    return {"exchange": exchange, "database": store, "io_manager": PostgresFrameIOManager(database=store)}


def _run(instance, resources):
    return dg.materialize([exchange_snapshot], partition_key="acct1", instance=instance,
                          resources=resources, raise_on_error=False)


def _error(result) -> str:
    return "\n".join(e.step_failure_data.error.to_string() for e in result.get_step_failure_events())


def _persisted(dsn) -> dict:
    with psycopg.connect(dsn) as conn:
        stored = dict(conn.execute("SELECT asset_key, run_id FROM recon.asset_values "
                                   "WHERE partition_key = 'acct1'").fetchall())
        (cursors,) = conn.execute("SELECT count(*) FROM recon.exchange_fill_cursors").fetchone()
        (fills,) = conn.execute("SELECT count(*) FROM recon.exchange_fills").fetchone()
    return {"assets": stored, "cursors": cursors, "fills": fills}


@pytest.mark.parametrize("name,fault,error", MATRIX, ids=[m[0] for m in MATRIX])
def test_fault_matrix(name, fault, error, sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    sim.exchange.inject_fault(**fault)
    result = _run(instance, _resources(sim, pg_dsn))
    persisted = _persisted(pg_dsn)
    if error is None:
        assert result.success, _error(result)
        assert set(persisted["assets"]) == set(SNAPSHOT_ASSETS)
        assert set(persisted["assets"].values()) == {result.run_id}
        positions = result.output_for_node("exchange_snapshot", "exchange_positions")
        assert len(positions) == 8 and (positions["qty"] > 0).sum() == 4  # the whole picture
        assert persisted["fills"] > 0
        if fault["kind"] != "latency":
            retries = [m.event_specific_data.materialization.metadata["retries"].value
                       for m in result.get_asset_materialization_events()]
            assert retries[0] >= 1
    else:
        assert not result.success
        text = _error(result)
        assert error in text, text
        assert "acct1" in text
        assert persisted == {"assets": {}, "cursors": 0, "fills": 0}  # nothing written at all
        secret = sim.credentials()["acct1"]["secret"]
        assert secret not in text


def test_a_failed_cycle_keeps_the_previous_snapshot(sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    resources = _resources(sim, pg_dsn)
    first = _run(instance, resources)
    assert first.success
    before = _persisted(pg_dsn)
    sim.exchange.inject_fault("server_error", path=POSITIONS, status=503, count=None)
    second = _run(instance, resources)
    assert not second.success
    after = _persisted(pg_dsn)
    assert after == before  # the last good snapshot stays; no empty one replaces it
    assert set(after["assets"].values()) == {first.run_id}


def test_systemic_empty_positions_is_a_valid_answer_left_to_the_watchdog(pg_dsn, instance):
    """An exchange answering 200 with no positions is indistinguishable from flat: the snapshot
    records it (one flat row per symbol that matters), and the integrity watchdog pauses."""
    server = SimulatorServer(port=0, scenario="systemic_glitch")
    server.start()
    try:
        server.scenario.seed_database(pg_dsn)
        result = _run(instance, _resources(server, pg_dsn))
        assert result.success
        positions = result.output_for_node("exchange_snapshot", "exchange_positions")
        assert (positions["side"] == "flat").all() and len(positions) >= 4
    finally:
        server.stop()


def test_wrong_secret_fails_at_once_without_leaking_it(sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    creds = sim.credentials()
    creds["acct1"]["secret"] = "not-the-secret-1234"
    result = _run(instance, _resources(sim, pg_dsn, creds))
    assert not result.success
    text = _error(result)
    assert "rejected the credentials" in text and "-1022" in text
    assert "not-the-secret-1234" not in text and creds["acct1"]["apiKey"] not in text
    assert sim.exchange.request_counts[f"GET {POSITIONS}"] == 1  # the first signed read; not retried
    assert f"GET {OPEN_ORDERS}" not in sim.exchange.request_counts
    assert _persisted(pg_dsn)["assets"] == {}


def test_unknown_key_and_missing_credentials_fail_naming_the_account(sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    result = _run(instance, _resources(sim, pg_dsn, {"acct1": {"apiKey": "nosuchkey", "secret": "s3cr3t"}}))
    text = _error(result)
    assert not result.success and "-2015" in text and "s3cr3t" not in text
    result = _run(instance, _resources(sim, pg_dsn, {"other": {"apiKey": "k", "secret": "s3cr3t"}}))
    text = _error(result)
    assert not result.success and "no apiKey and secret for exchange account 'acct1'" in text
    assert "s3cr3t" not in text
    assert _persisted(pg_dsn)["assets"] == {}
