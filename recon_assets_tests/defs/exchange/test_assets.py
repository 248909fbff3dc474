"""The three exchange snapshot assets, materialized by real Dagster, through real ccxt over HTTP
against the simulator, with the real Postgres for the database snapshot, cursors and IO."""

import io
import json

import dagster as dg
import pandas as pd
import psycopg
import pytest

from recon_assets.core.frames import EXCHANGE_FILLS, EXCHANGE_OPEN_ORDERS, EXCHANGE_POSITIONS
from recon_assets.defs.exchange.assets import CHECK_NAME, SNAPSHOT_ASSETS, exchange_snapshot
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.exchange import ExchangeResource
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets_tests.harness.exchange import running_simulator

pytestmark = pytest.mark.integration


@pytest.fixture
def sim():
    with running_simulator("demo") as server:
        yield server


def _resources(sim, dsn, **exchange_config):
    store = PostgresStore(dsn=dsn)
    exchange = ExchangeResource(credentials=json.dumps(sim.credentials()), api_base_url=sim.url,
                                backoff_initial_s=0.05, backoff_max_s=0.2, **exchange_config)
    return {"exchange": exchange, "database": store, "io_manager": PostgresFrameIOManager(database=store)}


def _materialize(instance, resources, account="acct1", raise_on_error=True):
    return dg.materialize([exchange_snapshot], partition_key=account, instance=instance,
                          resources=resources, raise_on_error=raise_on_error)


def _stored(dsn, asset, account="acct1"):
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT payload, run_id FROM recon.asset_values WHERE asset_key = %s "
                           "AND partition_key = %s", (asset, account)).fetchone()
    return (pd.read_parquet(io.BytesIO(row[0])), row[1]) if row else (None, None)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(exchange_account_partitions.name, ["acct1", "acct2"])
        yield inst


def test_materializes_the_demo_account_with_the_expected_rows(sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    result = _materialize(instance, _resources(sim, pg_dsn))
    assert result.success

    orders = result.output_for_node("exchange_snapshot", "exchange_open_orders")
    assert tuple(orders.columns) == EXCHANGE_OPEN_ORDERS
    by_cid = orders.set_index("client_order_id")
    # Our resting BTC exit, the partially filled BNB entry, our order the DB lost, the foreign
    # web order and the order the DB thinks is cancelled.
    assert set(by_cid.index) >= {"rc.ALP.t-a1.X1", "rc.BET.t-b3.E1", "rc.ALP.t-a7.E1", "rc.ALP.t-a8.E1"}
    assert any(c.startswith("web_") for c in by_cid.index)
    bnb = by_cid.loc["rc.BET.t-b3.E1"]
    assert (bnb.symbol, bnb.side, bnb.status, bnb.qty, bnb.filled_qty, bnb.price) == (
        "BNB/USDT:USDT", "buy", "partially_filled", 2.0, 0.8, 540.0)
    assert bnb.notional_usd == pytest.approx(1080.0)
    assert isinstance(orders["created_at"].dtype, pd.DatetimeTZDtype)
    assert str(orders["created_at"].dt.tz) == "UTC"

    positions_frame = result.output_for_node("exchange_snapshot", "exchange_positions")
    assert tuple(positions_frame.columns) == EXCHANGE_POSITIONS
    assert positions_frame["symbol"].is_unique
    positions = positions_frame.set_index("symbol")
    assert positions.loc["BTC/USDT:USDT", ["side", "qty"]].tolist() == ["long", 0.01]
    assert positions.loc["BTC/USDT:USDT", "min_qty_step"] == 0.001
    assert positions.loc["ETH/USDT:USDT", ["side", "qty"]].tolist() == ["short", 0.4]  # foreign fill
    assert positions.loc["SOL/USDT:USDT", ["side", "qty"]].tolist() == ["long", 10.0]  # filled behind DB
    # Ghost slices: closed on the exchange, open in the DB: a row with qty 0, not a missing row.
    for flat in ("LINK/USDT:USDT", "ADA/USDT:USDT", "DOGE/USDT:USDT"):
        assert positions.loc[flat, ["side", "qty", "notional_usd"]].tolist() == ["flat", 0.0, 0.0]
        assert positions.loc[flat, "min_qty_step"] > 0
    assert "XRP/USDT:USDT" in positions.index  # DB-open order cancelled behind its back

    fills = result.output_for_node("exchange_snapshot", "exchange_fills")
    assert tuple(fills.columns) == EXCHANGE_FILLS
    assert fills["exchange_fill_id"].is_unique or fills.duplicated(["symbol", "exchange_fill_id"]).sum() == 0
    link = fills[fills["symbol"] == "LINK/USDT:USDT"].set_index("client_order_id")
    assert link.loc["rc.ALP.t-a5.X1", ["side", "qty", "price"]].tolist() == ["sell", 10.0, 16.0]
    ada_close = fills[(fills["symbol"] == "ADA/USDT:USDT") & (fills["side"] == "sell")]
    assert ada_close["client_order_id"].str.startswith("web_").all()  # learnt by an order lookup
    doge = fills[fills["symbol"] == "DOGE/USDT:USDT"]
    assert doge["client_order_id"].str.startswith("autoclose-").any()
    assert fills["client_order_id"].notna().all()
    assert (fills["position_side"] == "both").all()  # a one-way account: every fill on BOTH

    mat = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    meta = mat["exchange_fills"].event_specific_data.materialization.metadata
    assert meta["rows"].value == len(fills)
    assert meta["requests"].value > 0 and "GET /fapi/v1/userTrades" in meta["requests_by_endpoint"].value
    assert "rc.ALP.t-a5.X1" in meta["preview"].value
    checks = result.get_asset_check_evaluations()
    assert {c.asset_key.to_user_string() for c in checks} == set(SNAPSHOT_ASSETS)
    assert all(c.passed and c.check_name == CHECK_NAME for c in checks)

    stored, run_id = _stored(pg_dsn, "exchange_positions")
    assert run_id == result.run_id and len(stored) == len(positions)


def test_a_hedge_mode_fill_keeps_its_leg_in_the_frame_and_the_store(pg_dsn, instance):
    """Issue item 11, "Hedge fills know their leg": acct3 is in hedge mode; epsilon's ENTRY is
    a SELL on the SHORT leg (it opened a short, it closed no long), its EXIT a BUY on SHORT,
    delta's ENTRY a BUY on LONG. Each fill of the exchange_fills frame, and of
    recon.exchange_fills, names its leg (core.rules.POSITION_LEGS)."""
    with running_simulator("hedge_mode") as sim:
        sim.scenario.seed_database(pg_dsn)
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["acct3"])
        result = _materialize(instance, _resources(sim, pg_dsn), account="acct3")
    assert result.success
    fills = result.output_for_node("exchange_snapshot", "exchange_fills")
    assert tuple(fills.columns) == EXCHANGE_FILLS
    legs = {cid: (side, leg) for cid, side, leg in
            zip(fills["client_order_id"], fills["side"], fills["position_side"])}
    assert legs == {"rc.DLT.t-d1.E1": ("buy", "long"), "rc.EPS.t-e1.E1": ("sell", "short"),
                    "rc.EPS.t-e1.X1": ("buy", "short")}
    with psycopg.connect(pg_dsn) as conn:
        stored = dict(conn.execute("SELECT client_order_id, position_side FROM recon.exchange_fills "
                                   "WHERE exchange_account = 'acct3'").fetchall())
    assert stored == {cid: leg for cid, (_, leg) in legs.items()}
    # The frame the cycle's next assets load is the stored one: the leg is in it too.
    frame, run_id = _stored(pg_dsn, "exchange_fills", "acct3")
    assert run_id == result.run_id
    assert frame.set_index("client_order_id").loc["rc.EPS.t-e1.E1", "position_side"] == "short"


def test_second_cycle_reads_only_what_changed(sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    resources = _resources(sim, pg_dsn)
    first = _materialize(instance, resources)
    fills_before = first.output_for_node("exchange_snapshot", "exchange_fills")

    sim.exchange.reset_request_counts()
    second = _materialize(instance, resources)
    counts = sim.exchange.reset_request_counts()
    # Symbols with an unchanged position are not re-read; flat symbols that matter are.
    positions = second.output_for_node("exchange_snapshot", "exchange_positions")
    flat = int((positions["side"] == "flat").sum())
    assert counts.get("GET /fapi/v1/userTrades", 0) == flat
    # Open orders per symbol that matters (weight 1 each, where all at once weighs 40).
    symbols = second.get_asset_materialization_events()[0].materialization.metadata[
        "symbols_that_matter"].value
    assert counts["GET /fapi/v3/positionRisk"] == 1
    assert counts["GET /fapi/v1/openOrders"] == counts["GET /fapi/v1/openAlgoOrders"] == symbols < 40
    assert "GET /fapi/v1/income" not in counts  # swept in the first cycle; not due again yet
    assert "GET /fapi/v1/order" not in counts  # client ids were learnt once, and stored
    fills_after = second.output_for_node("exchange_snapshot", "exchange_fills")
    assert len(fills_after) == len(fills_before)

    # A fill behind the database's back on a symbol with a position: read, from the cursor.
    sim.exchange.fill_order("acct1", client_order_id="rc.ALP.t-a1.X1", qty="0.004")
    third = _materialize(instance, resources)
    fills_third = third.output_for_node("exchange_snapshot", "exchange_fills")
    assert len(fills_third) == len(fills_before) + 1
    new = fills_third[~fills_third["exchange_fill_id"].isin(fills_before["exchange_fill_id"])
                      | (fills_third["symbol"] != "BTC/USDT:USDT")]
    assert (fills_third["client_order_id"] == "rc.ALP.t-a1.X1").sum() == 1
    assert new["qty"].tolist()[-1] == pytest.approx(0.004) or 0.004 in fills_third["qty"].tolist()
    with psycopg.connect(pg_dsn) as conn:
        (dupes,) = conn.execute("SELECT count(*) - count(DISTINCT (symbol, exchange_fill_id)) "
                                "FROM recon.exchange_fills").fetchone()
    assert dupes == 0


def test_a_symbol_the_exchange_does_not_list_fails_the_snapshot(sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO trade_history (trade_id, profile_id, symbol, side, entry_qty) "
                     "VALUES ('t-z', 'alpha', 'ZZZ/USDT:USDT', 'long', 1)")
    result = _materialize(instance, _resources(sim, pg_dsn), raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert "ZZZ/USDT:USDT" in failure
    assert _stored(pg_dsn, "exchange_positions") == (None, None)


def test_fill_reads_cut_by_the_page_cap_fail_the_blocking_check(sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    for _ in range(3):  # three more fills on ETH than one page holds
        sim.exchange.place_order("acct1", "ETHUSDT", "SELL", "MARKET", "0.001")
    resources = _resources(sim, pg_dsn, trades_page_limit=1, max_trade_pages=2)
    result = _materialize(instance, resources, raise_on_error=False)
    checks = {c.asset_key.to_user_string(): c for c in result.get_asset_check_evaluations()}
    assert checks["exchange_fills"].passed is False
    assert "page cap" in checks["exchange_fills"].metadata["problems"].value
    assert checks["exchange_positions"].passed is True
    # The incomplete snapshot failed the step and was not stored for anyone to read.
    assert not result.success
    assert all(_stored(pg_dsn, asset)[0] is None for asset in SNAPSHOT_ASSETS)
