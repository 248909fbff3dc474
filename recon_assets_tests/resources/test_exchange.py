"""The exchange resource: payload checks that name the field, the retry policy, incremental fill
reads (real ccxt and the simulator where HTTP is involved). The snapshot's plain decisions are
tested in core/test_exchange_snapshot.py."""

import json
import time
from email.utils import formatdate

import pytest

from recon_assets.resources.exchange import (ExchangeCredentialsError, ExchangeFetchError,
                                             ExchangePayloadError, ExchangeResource, check_payload,
                                             exchange_settings_from_env, point_urls_at,
                                             response_age_s)
from recon_assets.simulator.state import SimExchange
from recon_assets_tests.harness.exchange import running_simulator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim():
    with running_simulator("demo") as server:
        yield server


def _resource(sim, **config):
    return ExchangeResource(credentials=json.dumps(sim.credentials()), api_base_url=sim.url,
                            enable_rate_limit=False, backoff_initial_s=0.01, backoff_max_s=0.05, **config)


def _order(**overrides):
    ex = SimExchange()
    ex.add_account("a")
    order = ex.place_order("a", "BTCUSDT", "BUY", "LIMIT", "0.001", "50000.0", client_order_id="c1")
    return {**ex.order_payload(order), **overrides}


@pytest.mark.parametrize("overrides,field", [
    ({"origQty": "abc"}, "'origQty'"), ({"origQty": "0"}, "'origQty'"), ({"executedQty": "0.002"}, "'executedQty'"),
    ({"orderId": "abc"}, "'orderId'"), ({"side": "buy"}, "'side'"), ({"status": "OPEN"}, "'status'"),
    ({"price": None}, "'price'"), ({"positionSide": "SIDEWAYS"}, "'positionSide'"), ({"time": -1}, "'time'"),
    ({"clientOrderId": 7}, "'clientOrderId'"), ({"origQty": "NaN"}, "'origQty'"),
    # Issue 38: text a database or a log must not take, digits Python reads but Binance never
    # sends (Decimal("١٢") is 12), a quantity infinite as a float.
    ({"clientOrderId": "rc.P1.t1.X1\x00"}, "'clientOrderId'"),
    ({"clientOrderId": "x" * 300}, "'clientOrderId'"), ({"type": "LIMIT\x00"}, "'type'"),
    ({"origQty": "\u0661\u0662"}, "'origQty'"), ({"price": "\uff15\uff10"}, "'price'"),
    ({"time": "\u0661\u0662\u0663"}, "'time'"), ({"origQty": "1E+400"}, "'origQty'"),
])
def test_bad_order_fields_are_named(overrides, field):
    with pytest.raises(ExchangePayloadError, match=field) as err:
        check_payload("GET", "/fapi/v1/openOrders", [_order(), _order(**overrides)], {"BTCUSDT"})
    assert "item 1" in str(err.value) and "GET /fapi/v1/openOrders" in str(err.value)


def test_missing_fields_and_wrong_shapes_are_named():
    order = _order()
    del order["executedQty"]
    with pytest.raises(ExchangePayloadError, match="'executedQty' is missing"):
        check_payload("GET", "/fapi/v1/openOrders", [order])
    with pytest.raises(ExchangePayloadError, match="expected a JSON list, got dict"):
        check_payload("GET", "/fapi/v3/positionRisk", {"positions": []})
    with pytest.raises(ExchangePayloadError, match="item 0 is str"):
        check_payload("GET", "/fapi/v1/userTrades", ["x"])
    with pytest.raises(ExchangePayloadError, match="'entryPrice'"):
        check_payload("GET", "/fapi/v3/positionRisk", [{
            "symbol": "BTCUSDT", "positionSide": "BOTH", "positionAmt": "1", "entryPrice": "0",
            "markPrice": "1", "notional": "1", "updateTime": 1}])
    with pytest.raises(ExchangePayloadError, match="LOT_SIZE"):
        check_payload("GET", "/fapi/v1/exchangeInfo", {"symbols": [{
            "symbol": "X", "baseAsset": "X", "quoteAsset": "USDT", "status": "TRADING", "filters": []}]})
    leg = {"symbol": "BTCUSDT", "positionSide": "SHORT", "positionAmt": "0.5", "entryPrice": "1",
           "markPrice": "1", "notional": "1", "updateTime": 1}
    with pytest.raises(ExchangePayloadError, match="wrong sign for the SHORT leg"):
        check_payload("GET", "/fapi/v3/positionRisk", [leg])
    check_payload("GET", "/fapi/v3/positionRisk", [{**leg, "positionAmt": "-0.5"}])  # hedge mode
    check_payload("GET", "/fapi/v1/openOrders", [])  # an empty list is a valid answer
    check_payload("GET", "/fapi/v1/openOrders", [_order()], {"BTCUSDT"})


def test_response_age_reads_age_and_date_headers():
    now = time.time()
    assert response_age_s({}, now) == 0
    assert response_age_s({"Age": "120"}, now) == 120
    assert 295 <= response_age_s({"Date": formatdate(now - 300, usegmt=True)}, now) <= 300
    assert response_age_s({"Date": formatdate(now, usegmt=True), "Age": "junk"}, now) == 0


def test_every_api_url_points_at_the_base():
    urls = point_urls_at({"fapiPublic": "https://fapi.binance.com/fapi/v1",
                          "nested": {"x": "https://api.binance.com/api/v3"}, "n": None}, "http://h:1/")
    assert urls == {"fapiPublic": "http://h:1/fapi/v1", "nested": {"x": "http://h:1/api/v3"}, "n": None}


def test_credentials_errors_never_echo_the_value():
    bad = ExchangeResource(credentials='{"acct1": {"apiKey": "k", "secret": "s3cr3t"')
    with pytest.raises(ExchangeCredentialsError) as err:
        bad.session("acct1")
    assert "not valid JSON" in str(err.value) and "s3cr3t" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    partial = ExchangeResource(credentials=json.dumps({"acct1": {"apiKey": "k"}}))
    with pytest.raises(ExchangeCredentialsError, match="'acct1'"):
        partial.session("acct1")
    resource = ExchangeResource(credentials=json.dumps({"acct1": {"apiKey": "k3y", "secret": "s3cr3t"}}))
    assert resource.accounts() == ["acct1"]
    assert "s3cr3t" not in repr(resource) and "s3cr3t" not in str(resource)


def test_the_exchange_is_configuration_not_code():
    """Exchange id, demo trading, ccxt options and limits from RECON_EXCHANGE_<FIELD>; a
    passphrase for the exchanges that need one; bad values are clear errors."""
    settings = exchange_settings_from_env({
        "RECON_EXCHANGE_EXCHANGE_ID": "okx", "RECON_EXCHANGE_DEMO_TRADING": "true",
        "RECON_EXCHANGE_WEIGHT_LIMIT_PER_MINUTE": "1200",
        "RECON_EXCHANGE_CCXT_OPTIONS": '{"defaultType": "swap"}',
        "RECON_EXCHANGE_CREDENTIALS": "not taken from here", "UNRELATED": "x"})
    assert settings == {"exchange_id": "okx", "demo_trading": "true",
                        "weight_limit_per_minute": "1200", "ccxt_options": '{"defaultType": "swap"}'}
    credentials = json.dumps({"acct1": {"apiKey": "k3y", "secret": "s3cr3t", "password": "pa55"}})
    okx = ExchangeResource(credentials=credentials, **{k: v for k, v in settings.items()
                                                       if k != "demo_trading"})
    assert okx.weight_limit_per_minute == 1200
    client = okx.build_client("acct1")
    assert client.id == "okx" and client.password == "pa55"
    assert client.options["defaultType"] == "swap"
    assert "pa55" not in repr(okx)
    binance = ExchangeResource(credentials=credentials, demo_trading=True)
    assert "demo-fapi.binance.com" in binance.build_client("acct1").urls["api"]["fapiPrivate"]
    with pytest.raises(ValueError, match="JSON object of ccxt options"):
        ExchangeResource(credentials=credentials, ccxt_options="[1]").build_client("acct1")
    blank = json.dumps({"acct1": {"apiKey": "k", "secret": "s", "password": ""}})
    with pytest.raises(ExchangeCredentialsError, match="password"):
        ExchangeResource(credentials=blank).build_client("acct1")


def test_ccxt_debug_logs_never_carry_the_key(sim, caplog):
    import logging

    session = _resource(sim).session("acct1")
    with caplog.at_level(logging.DEBUG):
        session.load_markets()
        session.fetch_open_orders()
    key = sim.credentials()["acct1"]["apiKey"]
    assert all(key not in record.getMessage() for record in caplog.records)


def test_fills_are_read_page_by_page_from_the_cursor(sim):
    for _ in range(5):
        sim.exchange.place_order("acct1", "XRPUSDT", "BUY", "MARKET", "10.0")
    session = _resource(sim, trades_page_limit=2, max_trade_pages=10).session("acct1")
    session.load_markets()
    fills, complete = session.fetch_fills("XRP/USDT:USDT", None, int(time.time() * 1000) - 3_600_000)
    assert complete and len(fills) == 5
    ids = [int(f["id"]) for f in fills]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert session.stats.by_endpoint["GET /fapi/v1/userTrades"] == 3  # 2 + 2 + 1
    more, complete = session.fetch_fills("XRP/USDT:USDT", ids[2], None)
    assert [int(f["id"]) for f in more] == ids[3:] and complete
    capped = _resource(sim, trades_page_limit=1, max_trade_pages=2).session("acct1")
    capped.load_markets()
    part, complete = capped.fetch_fills("XRP/USDT:USDT", None, int(time.time() * 1000) - 3_600_000)
    assert len(part) == 2 and complete is False


def test_retry_after_is_honoured_and_counted(sim):
    waits = []
    session = _resource(sim).session("acct1", sleep=lambda s: (waits.append(s), time.sleep(s)))
    session.load_markets()
    sim.exchange.inject_fault("rate_limit", path="/fapi/v1/openOrders", retry_after_s=1)
    orders = session.fetch_open_orders()
    assert orders and waits and waits[0] >= 1.0
    assert session.stats.retries == 1 and session.stats.by_endpoint["GET /fapi/v1/openOrders"] == 2


def test_not_found_is_not_retried(sim):
    session = _resource(sim).session("acct1")
    session.load_markets()
    with pytest.raises(ExchangeFetchError, match="OrderNotFound") as err:
        session.fetch_order("1", "BTC/USDT:USDT")
    assert "signature=<redacted>" in str(err.value) or "signature" not in str(err.value)
    assert session.stats.requests == 1


def test_a_response_over_the_size_cap_is_refused_naming_the_endpoint(sim):
    """Issue 38: an answer larger than `max_response_bytes` is never read whole, parsed or
    booked: the read fails naming the endpoint and the cap (and is not retried: the same
    answer would come back). Under the default cap the same answer is read."""
    import urllib.request

    with urllib.request.urlopen(f"{sim.url}/fapi/v1/exchangeInfo") as answer:
        cap = len(answer.read()) + 1  # the markets fit; an open-orders answer larger does not
    n = cap // 200 + 5
    for i in range(n):
        sim.exchange.place_order("acct1", "BTCUSDT", "BUY", "LIMIT", "0.001", "1000.0",
                                 client_order_id=f"cap-{i}")
    try:
        assert len(_resource(sim).session("acct1").fetch_open_orders()) >= n
        capped = _resource(sim, max_response_bytes=cap).session("acct1")
        capped.load_markets()
        with pytest.raises(ExchangePayloadError) as err:
            capped.fetch_open_orders()
        message = str(err.value)
        assert "GET /fapi/v1/openOrders" in message and f"{cap} bytes" in message
        assert capped.stats.by_endpoint.get("GET /fapi/v1/openOrders") == 1
    finally:
        for i in range(n):
            sim.exchange.cancel_order("acct1", client_order_id=f"cap-{i}")
