"""The loopback Binance USD-M simulator, driven by the real ccxt `binanceusdm` over real HTTP."""

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from urllib.parse import urlencode

import ccxt
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon_assets.local_postgres import free_port
from recon_assets.resources.exchange import point_urls_at
from recon_assets.simulator import SimExchange
from recon_assets.simulator.scenarios import SCENARIOS, build_scenario
from recon_assets.simulator.state import SimError
from recon_assets_tests.harness.exchange import running_simulator
from recon_assets_tests.harness.examples import examples

pytestmark = pytest.mark.integration

BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"


@pytest.fixture(scope="module")
def sim():
    with running_simulator() as server:
        yield server


@pytest.fixture
def demo(sim):
    sim.exchange.clear_faults()
    sim.load_scenario("demo")
    return sim


def _ccxt(sim, account="acct1", secret=None, api_key=None):
    creds = sim.credentials()[account]
    client = ccxt.binanceusdm({
        "apiKey": api_key or creds["apiKey"], "secret": secret or creds["secret"],
        "enableRateLimit": False,
        "options": {"fetchCurrencies": False, "fetchMargins": False,
                    "warnOnFetchOpenOrdersWithoutSymbol": False}})
    client.urls["api"] = point_urls_at(client.urls["api"], sim.url)
    return client


def _signed_get(sim, path, params, account="acct1", secret=None, api_key=None):
    """A signed request made by hand, to see the raw Binance-shaped payload."""
    creds = sim.credentials()[account]
    query = urlencode({**params, "timestamp": int(time.time() * 1000), "recvWindow": 5000})
    signature = hmac.new((secret or creds["secret"]).encode(), query.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"{sim.url}{path}?{query}&signature={signature}")
    if api_key != "":
        request.add_header("X-MBX-APIKEY", api_key or creds["apiKey"])
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_ccxt_reads_every_endpoint(demo):
    client = _ccxt(demo)
    markets = client.load_markets()
    assert markets[BTC]["precision"]["amount"] == 0.001 and markets[BTC]["linear"] is True

    orders = client.fetch_open_orders()
    assert {o["clientOrderId"] for o in orders} >= {"rc.ALP.t-a1.X1", "rc.BET.t-b3.E1"}
    assert [o["id"] for o in client.fetch_open_orders(BTC)] == [o["id"] for o in orders if o["symbol"] == BTC]

    positions = {p["symbol"]: p for p in client.fetch_positions()}  # leverageBracket + positionRisk
    assert (positions[BTC]["side"], positions[BTC]["contracts"], positions[BTC]["entryPrice"]) == ("long", 0.01, 59000.0)
    assert (positions[ETH]["side"], positions[ETH]["contracts"]) == ("short", 0.4)
    assert positions[BTC]["maintenanceMarginPercentage"] == 0.004  # from the leverage brackets

    trades = client.fetch_my_trades("LINK/USDT:USDT")
    assert [(t["side"], t["amount"], t["price"]) for t in trades] == [("buy", 10.0, 14.5), ("sell", 10.0, 16.0)]
    assert trades[0]["fee"]["currency"] == "USDT" and trades[0]["fee"]["cost"] > 0

    balance = client.fetch_balance()
    assert balance["USDT"]["total"] > 0
    tiers = client.fetch_leverage_tiers([BTC])[BTC]
    assert tiers[0]["maxLeverage"] == 125
    assert client.fetch_time() > 0


def test_ccxt_trades_against_it(demo):
    client = _ccxt(demo)
    client.load_markets()
    placed = client.create_order(BTC, "limit", "buy", 0.002, 50000, {"newClientOrderId": "rc.ALP.t-n1.E1"})
    assert (placed["status"], placed["clientOrderId"], placed["amount"]) == ("open", "rc.ALP.t-n1.E1", 0.002)
    assert client.fetch_order(placed["id"], BTC)["status"] == "open"
    by_client_id = client.fetch_order(None, BTC, {"origClientOrderId": "rc.ALP.t-n1.E1"})
    assert by_client_id["id"] == placed["id"]

    demo.exchange.fill_order("acct1", placed["id"], qty="0.001")  # behind everyone's back
    partly = client.fetch_order(placed["id"], BTC)
    assert (partly["status"], partly["filled"], partly["info"]["status"]) == ("open", 0.001, "PARTIALLY_FILLED")
    cancelled = client.cancel_order(placed["id"], BTC)
    assert cancelled["info"]["status"] == "CANCELED"
    with pytest.raises(ccxt.OrderNotFound):
        client.cancel_order(placed["id"], BTC)
    with pytest.raises(ccxt.OrderNotFound):
        client.fetch_order("1", BTC)

    market = client.create_order(ETH, "market", "buy", 0.01)
    assert (market["status"], market["filled"], market["average"]) == ("closed", 0.01, 3000.0)
    assert market["clientOrderId"]  # ccxt generated one
    with pytest.raises(ccxt.BadRequest):  # Binance's client id rule
        client.create_order(BTC, "limit", "buy", 0.001, 50000, {"newClientOrderId": "has space"})
    with pytest.raises(ccxt.BadRequest, match="-1111"):  # off the LOT_SIZE step (ccxt would round)
        client.fapiPrivatePostOrder({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                     "quantity": "0.0015", "price": "50000", "timeInForce": "GTC"})
    demo.exchange.check_consistency()


def test_payloads_are_shaped_like_binance(demo):
    status, orders = _signed_get(demo, "/fapi/v1/openOrders", {"symbol": "BNBUSDT"})
    assert status == 200
    order = orders[0]
    assert set(order) >= {"avgPrice", "clientOrderId", "cumQuote", "executedQty", "orderId", "origQty",
                          "origType", "price", "reduceOnly", "side", "positionSide", "status",
                          "stopPrice", "closePosition", "symbol", "time", "timeInForce", "type",
                          "updateTime", "workingType", "priceProtect", "priceMatch",
                          "selfTradePreventionMode", "goodTillDate"}
    assert (order["status"], order["side"], order["positionSide"]) == ("PARTIALLY_FILLED", "BUY", "BOTH")
    assert (order["origQty"], order["executedQty"], order["price"]) == ("2.00", "0.80", "540.000")
    assert isinstance(order["orderId"], int) and order["time"] > 1_600_000_000_000

    _, positions = _signed_get(demo, "/fapi/v3/positionRisk", {})
    btc = next(p for p in positions if p["symbol"] == "BTCUSDT")
    assert (btc["positionAmt"], btc["entryPrice"], btc["positionSide"]) == ("0.010", "59000", "BOTH")
    assert all(isinstance(btc[k], str) for k in ("markPrice", "notional", "unRealizedProfit"))
    # V3 lists symbols with a position or open orders, nothing else.
    listed = {p["symbol"] for p in positions}
    assert "LINKUSDT" not in listed and "XRPUSDT" not in listed

    _, trades = _signed_get(demo, "/fapi/v1/userTrades", {"symbol": "LINKUSDT"})
    assert set(trades[0]) == {"buyer", "commission", "commissionAsset", "id", "maker", "orderId",
                              "price", "qty", "quoteQty", "realizedPnl", "side", "positionSide",
                              "symbol", "time"}
    assert trades[1]["realizedPnl"] == "15.00000000"  # (16 - 14.5) * 10

    _, account = _signed_get(demo, "/fapi/v3/account", {})
    assert account["assets"][0]["asset"] == "USDT" and isinstance(account["totalWalletBalance"], str)
    _, brackets = _signed_get(demo, "/fapi/v1/leverageBracket", {"symbol": "BTCUSDT"})
    assert brackets[0]["brackets"][0]["notionalFloor"] == 0
    with urllib.request.urlopen(f"{demo.url}/fapi/v1/exchangeInfo") as response:
        info = json.loads(response.read())
    btc_market = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
    assert btc_market["contractType"] == "PERPETUAL" and btc_market["quantityPrecision"] == 3


def test_user_trades_follow_binance_parameter_rules(demo):
    status, body = _signed_get(demo, "/fapi/v1/userTrades", {"symbol": "LINKUSDT", "fromId": 1, "startTime": 1})
    assert (status, body["code"]) == (400, -1128)
    status, body = _signed_get(demo, "/fapi/v1/userTrades", {"symbol": "LINKUSDT", "startTime": 1,
                                                              "endTime": 8 * 86_400_000})
    assert (status, body["code"]) == (400, -1127)
    _, first = _signed_get(demo, "/fapi/v1/userTrades", {"symbol": "LINKUSDT", "limit": 1})
    _, rest = _signed_get(demo, "/fapi/v1/userTrades", {"symbol": "LINKUSDT", "fromId": first[0]["id"] - 1})
    assert len(first) == 1 and len(rest) == 2  # no range: the most recent; fromId: from there on
    status, body = _signed_get(demo, "/fapi/v1/userTrades", {})
    assert (status, body["code"]) == (400, -1102)


def test_bad_credentials_are_rejected_the_way_binance_does(demo):
    status, body = _signed_get(demo, "/fapi/v1/openOrders", {}, api_key="")
    assert (status, body["code"]) == (401, -2014)
    status, body = _signed_get(demo, "/fapi/v1/openOrders", {}, api_key="nosuchkey")
    assert (status, body["code"]) == (401, -2015)
    status, body = _signed_get(demo, "/fapi/v1/openOrders", {}, secret="wrong")
    assert (status, body["code"]) == (400, -1022)
    with pytest.raises(ccxt.AuthenticationError):
        _ccxt(demo, secret="wrong").fetch_open_orders()
    with pytest.raises(ccxt.AuthenticationError):
        _ccxt(demo, api_key="nosuchkey").fetch_positions()
    # A signature of other parameters (a replayed or tampered request) is rejected too.
    creds = demo.credentials()["acct1"]
    query = urlencode({"timestamp": int(time.time() * 1000)})
    signature = hmac.new(creds["secret"].encode(), query.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"{demo.url}/fapi/v1/openOrders?{query}&symbol=BTCUSDT&signature={signature}",
                                     headers={"X-MBX-APIKEY": creds["apiKey"]})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert json.loads(err.value.read())["code"] == -1022
    old = {"timestamp": int(time.time() * 1000) - 60_000}
    q = urlencode(old)
    sig = hmac.new(creds["secret"].encode(), q.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"{demo.url}/fapi/v1/openOrders?{q}&signature={sig}",
                                     headers={"X-MBX-APIKEY": creds["apiKey"]})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert json.loads(err.value.read())["code"] == -1021


def _control(sim, op, **args):
    request = urllib.request.Request(f"{sim.url}/_control/{op}", data=json.dumps(args).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_control_surface_changes_state_behind_the_databases_back(demo):
    client = _ccxt(demo)
    client.load_markets()
    assert _control(demo, "fill_order", account="acct1", client_order_id="rc.BET.t-b3.E1")["qty"] == "1.20"
    assert not any(o["clientOrderId"] == "rc.BET.t-b3.E1" for o in client.fetch_open_orders())
    assert _control(demo, "cancel_order", account="acct1", client_order_id="rc.ALP.t-a8.E1")["status"] == "CANCELED"
    closed = _control(demo, "close_position", account="acct1", symbol="ETHUSDT")
    assert closed["clientOrderId"].startswith("web_") and closed["status"] == "FILLED"
    liquidated = _control(demo, "liquidate", account="acct1", symbol="BTCUSDT")
    assert liquidated["clientOrderId"].startswith("autoclose-")
    positions = {p["symbol"] for p in client.fetch_positions()}
    assert ETH not in positions and BTC not in positions
    assert "rc.ALP.t-a1.X1" not in {o["clientOrderId"] for o in client.fetch_open_orders()}  # cancelled by it
    state = json.loads(urllib.request.urlopen(f"{demo.url}/_control/state").read())
    assert "acct1" in state["accounts"]
    assert json.loads(urllib.request.urlopen(f"{demo.url}/_control/credentials").read())["acct1"]["apiKey"]
    with pytest.raises(urllib.error.HTTPError) as err:
        _control(demo, "fill_order", account="acct1", client_order_id="nope")
    assert err.value.code == 400
    _control(demo, "scenario", name="clean")
    assert {o["clientOrderId"] for o in client.fetch_open_orders()} == {"rc.ALP.t-a1.X1"}
    demo.exchange.check_consistency()


def test_faults_through_the_control_surface(demo):
    client = _ccxt(demo)
    client.load_markets()
    _control(demo, "fault", kind="rate_limit", path="/fapi/v1/openOrders", retry_after_s=7)
    with pytest.raises(ccxt.DDoSProtection):
        client.fetch_open_orders()
    assert len(client.fetch_open_orders()) > 0  # used up
    _control(demo, "fault", kind="server_error", status=502)
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.fetch_positions()
    _control(demo, "fault", kind="drop")
    with pytest.raises(ccxt.NetworkError):
        client.fetch_positions()
    _control(demo, "fault", kind="truncated", path="/fapi/v1/openOrders")
    with pytest.raises(ccxt.NetworkError):
        client.fetch_open_orders()
    _control(demo, "fault", kind="malformed_json", path="/fapi/v1/openOrders")
    assert isinstance(client.fapiPrivateGetOpenOrders(), str)  # ccxt hands the cut text back as is
    _control(demo, "fault", kind="empty", path="/fapi/v3/positionRisk", count=2)
    assert client.fetch_positions() == [] and client.fetch_positions() == []
    assert client.fetch_positions() != []
    _control(demo, "fault", kind="ban", retry_after_s=120)
    with pytest.raises(ccxt.DDoSProtection):
        client.fetch_open_orders()
    _control(demo, "clear_faults")


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_scenario_builds_and_seeds_the_real_database(name, pg_dsn):
    exchange = SimExchange()
    scenario = build_scenario(exchange, name)
    exchange.check_consistency()
    scenario.seed_database(pg_dsn)  # the trading tables' constraints accept what the DB believes
    with psycopg.connect(pg_dsn) as conn:
        (profiles,) = conn.execute("SELECT count(*) FROM profiles").fetchone()
        snapshot = conn.execute("SELECT recon_snapshot_account('acct1')").fetchone()[0]
    # acct1 and acct2 with alpha, beta, gamma; hedge_mode adds acct3 with delta and epsilon.
    assert profiles == (5 if name == "hedge_mode" else 3) and snapshot["trade_slices"]
    in_sync = ("clean", "legacy_slices")  # the scenarios with no divergence
    assert (name in in_sync) == (scenario.expected == [])
    for finding in scenario.expected:
        assert finding["kind"] in {"missing_from_exchange", "missing_in_db", "qty_drift", "status_drift",
                                   "price_drift", "position_drift", "ghost_slice"}


def test_demo_covers_every_divergence_the_runbook_names():
    scenario = build_scenario(SimExchange(), "demo")
    kinds = {f["kind"] for f in scenario.expected}
    assert kinds == {"missing_from_exchange", "missing_in_db", "qty_drift", "status_drift",
                     "price_drift", "position_drift", "ghost_slice"}
    handlers = {f.get("handler") for f in scenario.expected}
    assert {"reconcile_entry_fill", "reconcile_exit_fill", "reconcile_cancel", "adopt_order"} <= handlers
    ghosts = [f for f in scenario.expected if f["kind"] == "ghost_slice"]
    assert {g.get("backfill") for g in ghosts} >= {"GO", "NO_GO"}
    assert any(g["attributable"] is False for g in ghosts)


_ops = st.lists(st.tuples(
    st.sampled_from(["limit", "market", "fill", "partial", "cancel", "close", "liquidate"]),
    st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.sampled_from(["BUY", "SELL"]),
    st.integers(min_value=1, max_value=5)), min_size=1, max_size=25)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_positions_are_always_the_sum_of_fills(ops):
    exchange = SimExchange()
    exchange.add_account("a")
    for op, symbol, side, n in ops:
        mark = exchange.markets[symbol].mark_price
        open_orders = [o for o in exchange.accounts["a"].orders.values() if o.is_open]
        if op == "limit":
            price = mark - 100 if side == "BUY" else mark + 100
            exchange.place_order("a", symbol, side, "LIMIT", Decimal(n) / 1000, price)
        elif op == "market":
            exchange.place_order("a", symbol, side, "MARKET", Decimal(n) / 1000)
        elif op in ("fill", "partial") and open_orders:
            order = open_orders[n % len(open_orders)]
            qty = order.remaining if op == "fill" or order.remaining <= Decimal("0.001") else Decimal("0.001")
            exchange.fill_order("a", order.order_id, qty=qty)
        elif op == "cancel" and open_orders:
            exchange.cancel_order("a", open_orders[n % len(open_orders)].order_id)
        elif op == "close":
            exchange.close_position("a", symbol)
        elif op == "liquidate":
            exchange.liquidate("a", symbol)
        exchange.check_consistency()
    for order in exchange.accounts["a"].orders.values():
        assert (order.status == "FILLED") == (order.executed_qty == order.orig_qty)


def _reset_signals():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_recon_simulator_runs_on_its_own():
    port = free_port()
    recon = os.path.join(os.path.dirname(sys.executable), "recon")
    proc = subprocess.Popen([recon, "simulator", "--port", str(port), "--scenario", "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_reset_signals)
    try:
        line = proc.stdout.readline()
        assert f"listening on http://127.0.0.1:{port}" in line, line
        assert "simsecret" not in line  # the keys are not printed
        creds = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/_control/credentials").read())
        client = ccxt.binanceusdm({"apiKey": creds["acct1"]["apiKey"], "secret": creds["acct1"]["secret"],
                                   "enableRateLimit": False,
                                   "options": {"fetchCurrencies": False, "fetchMargins": False,
                                               "warnOnFetchOpenOrdersWithoutSymbol": False}})
        client.urls["api"] = point_urls_at(client.urls["api"], f"http://127.0.0.1:{port}")
        assert len(client.fetch_open_orders()) == 5
        order = client.create_order(BTC, "market", "sell", 0.001)
        assert order["status"] == "closed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_hedge_mode_keeps_a_long_and_a_short_leg_per_symbol_like_binance(sim):
    """Dual-side position mode: each order names its leg; positionRisk lists both legs of a
    symbol; the mode cannot change while anything is open; orders must name a leg that
    matches the mode; reduceOnly is refused and a close past the leg's size is rejected."""
    sim.load_scenario("clean")
    ex = sim.exchange
    ex.add_account("hedged")
    with pytest.raises(SimError) as err:  # one-way: a leg is refused
        ex.place_order("hedged", "BTCUSDT", "BUY", "MARKET", "0.010", position_side="LONG")
    assert err.value.code == -4061
    _control(sim, "set_position_mode", account="hedged", dual_side=True)
    client = _ccxt(sim, "hedged")
    client.create_order("BTC/USDT:USDT", "market", "buy", 0.02, None, {"positionSide": "LONG"})
    client.create_order("BTC/USDT:USDT", "market", "sell", 0.01, None, {"positionSide": "SHORT"})
    _, rows = _signed_get(sim, "/fapi/v3/positionRisk", {}, account="hedged")
    assert [(r["positionSide"], Decimal(r["positionAmt"])) for r in rows] == [
        ("LONG", Decimal("0.02")), ("SHORT", Decimal("-0.01"))]
    trades = client.fetch_my_trades("BTC/USDT:USDT")
    assert [t["info"]["positionSide"] for t in trades] == ["LONG", "SHORT"]
    for bad, code in (({}, -4061), ({"positionSide": "BOTH"}, -4061),
                      ({"positionSide": "LONG", "reduceOnly": True}, -1106)):
        with pytest.raises(ccxt.BaseError) as err:
            client.create_order("BTC/USDT:USDT", "market", "sell", 0.01, None, bad)
        assert str(code) in str(err.value)
    with pytest.raises(SimError) as err:  # closing more than the leg holds
        ex.place_order("hedged", "BTCUSDT", "SELL", "MARKET", "0.030", position_side="LONG")
    assert err.value.code == -2022
    with pytest.raises(SimError) as err:
        ex.set_position_mode("hedged", False)
    assert err.value.code == -4068
    ex.close_position("hedged", "BTCUSDT", position_side="SHORT")
    _, rows = _signed_get(sim, "/fapi/v3/positionRisk", {}, account="hedged")
    assert [(r["positionSide"], Decimal(r["positionAmt"])) for r in rows] == [
        ("LONG", Decimal("0.02")), ("SHORT", 0)]
    ex.check_consistency()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.7", "exchange.example.com", ""])
def test_the_simulator_refuses_to_serve_beyond_this_machine(host):
    """Issue 38: it takes any API key and fills orders on request, so it never binds an
    address another host can reach (a production image that starts it by mistake exposes
    nothing); loopback addresses are fine."""
    from recon_assets.simulator.server import SimulatorServer

    with pytest.raises(ValueError, match="serves this machine only"):
        SimulatorServer(port=0, host=host)
    for loopback in ("127.0.0.1", "::1", "localhost"):
        assert SimulatorServer(port=0, host=loopback).host == loopback


def test_a_new_order_is_listed_only_after_the_listing_delay(sim):
    """Binance's API may lag its matching engine: with a listing delay a new order is not in
    the open orders and its query answers -2013, through ccxt; an order older than the delay
    is listed as usual."""
    sim.load_scenario("clean")
    _control(sim, "set_listing_delay", delay_ms=60_000)
    young = sim.exchange.place_order("acct1", "SOLUSDT", "BUY", "LIMIT", "1", "100.0000",
                                     client_order_id="rc.ALP.t-y.E1")
    old = sim.exchange.place_order("acct1", "SOLUSDT", "BUY", "LIMIT", "1", "100.0000",
                                   client_order_id="rc.ALP.t-o.E1",
                                   at_ms=int(time.time() * 1000) - 61_000)
    client = _ccxt(sim)
    listed = {o["clientOrderId"] for o in client.fetch_open_orders("SOL/USDT:USDT")}
    assert "rc.ALP.t-o.E1" in listed and "rc.ALP.t-y.E1" not in listed
    with pytest.raises(ccxt.OrderNotFound):
        client.fetch_order(str(young.order_id), "SOL/USDT:USDT")
    assert client.fetch_order(str(old.order_id), "SOL/USDT:USDT")["status"] == "open"
    _control(sim, "set_listing_delay", delay_ms=0)
    assert client.fetch_order(str(young.order_id), "SOL/USDT:USDT")["status"] == "open"
