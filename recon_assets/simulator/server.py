"""The simulator's HTTP server: Binance USD-M REST endpoints, request signing checks, faults, and
the `/_control/...` surface.

Endpoints (exactly what ccxt 4.5 `binanceusdm` calls for what this project does):
`GET /fapi/v1/exchangeInfo`, `GET /fapi/v1/openOrders`, `GET /fapi/v1/leverageBracket`,
`GET /fapi/v3/positionRisk`, `GET /fapi/v1/userTrades`, `GET /fapi/v3/account`,
`GET /fapi/v1/income` (the income history: a commission per fill, realised PnL),
`GET/POST/DELETE /fapi/v1/order`, the Algo Service's conditional orders (stop, take-profit,
trailing: `GET /fapi/v1/openAlgoOrders`, `GET/POST/DELETE /fapi/v1/algoOrder`; POST
/fapi/v1/order refuses those types with -4120, as Binance has since December 2025), `GET /fapi/v1/premiumIndex` (mark prices, for a symbol the
account holds nothing of), `GET /fapi/v1/klines` (1-minute candles of the mark price,
for the USD value of a fee paid in BNB at a fill's time), plus `GET /fapi/v1/ping` and
`GET /fapi/v1/time`. Commissions are charged in USDT, or in the account's fee asset
(`set_fee_asset`, e.g. BNB) at that asset's price at the fill's time.

Signed endpoints check, like Binance: the `X-MBX-APIKEY` header (401, -2014 when absent or
malformed; 401, -2015 when unknown), the `timestamp`/`recvWindow` window (400, -1021) and the
HMAC-SHA256 `signature` of the query string plus body (400, -1022).

Control (loopback only; for tests and the demo): `GET /_control/state`, `GET /_control/requests`,
`GET /_control/credentials`, and `POST /_control/<op>` with a JSON body, where op is one of
`reset`, `scenario` {name}, `add_account`, `add_market`, `set_mark_price`, `set_fee_asset`,
`set_position_mode` {account, dual_side} (hedge mode; refused with -4068/-4067 while the account
holds a position or an open order),
`set_rate_limits` {weight_per_minute, window_s, ban_base_s} (every request is charged its
documented weight, core.request_weights: beyond the limit a 429 with Retry-After, a request
before it ended a 418 ban, doubling per ban), `set_clock_offset` {offset_ms} (the exchange's clock ahead of this machine's; Date headers,
`/fapi/v1/time` and the recvWindow check follow it),
`set_listing_delay` {delay_ms} (a new order is not in the open orders and its query answers
-2013 until that long after it was placed: Binance's API lagging its matching engine),
`place_order`,
`fill_order`, `cancel_order`, `expire_order`, `close_position`, `liquidate`, `fault`,
`clear_faults`, `reset_requests` (arguments: the `SimExchange` method's keyword arguments).

`python -m recon_assets.simulator.server --port 8765 --scenario demo`, or `recon simulator ...`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import hmac
import json
import math
import re
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from recon_assets.processes import stop_on_signals
from recon_assets.resources.loopback import is_loopback_host
from recon_assets.simulator.state import (ALGO_ORDER_TYPES, Account, Fault, SimError, SimExchange,
                                          now_ms)

_API_KEY_RE = re.compile(r"^[A-Za-z0-9]{1,128}$")
_DEFAULT_RECV_WINDOW = 5000
_PUBLIC = {("GET", "/fapi/v1/ping"), ("GET", "/fapi/v1/time"), ("GET", "/fapi/v1/exchangeInfo"),
           ("GET", "/fapi/v1/klines"), ("GET", "/fapi/v1/premiumIndex")}
_SIGNED = {
    ("GET", "/fapi/v1/openOrders"), ("GET", "/fapi/v1/leverageBracket"),
    ("GET", "/fapi/v3/positionRisk"), ("GET", "/fapi/v1/userTrades"), ("GET", "/fapi/v3/account"),
    ("GET", "/fapi/v1/order"), ("POST", "/fapi/v1/order"), ("DELETE", "/fapi/v1/order"),
    ("GET", "/fapi/v1/openAlgoOrders"), ("GET", "/fapi/v1/algoOrder"),
    ("POST", "/fapi/v1/algoOrder"), ("DELETE", "/fapi/v1/algoOrder"), ("GET", "/fapi/v1/income"),
}
_CONTROL_OPS = {
    "reset", "scenario", "add_account", "add_market", "set_mark_price", "set_fee_asset", "place_order",
    "set_clock_offset", "set_listing_delay", "set_rate_limits", "set_position_mode", "place_algo_order", "trigger_algo_order", "cancel_algo_order", "fill_order", "cancel_order", "expire_order", "close_position", "liquidate", "fault",
    "clear_faults", "reset_requests",
}


def _bool(raw: str | None) -> bool:
    return str(raw).lower() == "true"


def _corrupt_rows(payload: Any, params: dict) -> Any:
    """The `corrupt_rows` fault (state.Fault): one item (or every item) of a list answer, or of
    the list an object answer holds (positions, symbols, assets), changed, duplicated or added
    to. An answer with no item to change is served as it is (unless `row` adds one). The
    simulator's own state is never changed (the answer is a copy)."""
    payload = copy.deepcopy(payload)
    items = payload
    if isinstance(payload, dict):
        items = next((payload[k] for k in ("positions", "symbols", "assets")
                      if isinstance(payload.get(k), list)), [payload])
    if not isinstance(items, list):
        return payload
    if "row" in params:  # added first, so `index` None and `duplicate` also reach it
        items.append(copy.deepcopy(params["row"]))
    index = params.get("index", 0)
    chosen = range(len(items)) if index is None else [index] if -len(items) <= index < len(items) else []
    changed = []
    for i in chosen:
        item = items[i]
        if not isinstance(item, dict):
            continue
        target = copy.deepcopy(item) if params.get("duplicate") else item
        for name, value in (params.get("set") or {}).items():
            target[name] = copy.deepcopy(value)
        for name in params.get("drop") or ():
            target.pop(name, None)
        if params.get("duplicate"):
            changed.append((i, target))
    for i, copy_ in reversed(changed):
        items.insert(i + 1, copy_)
    return payload


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as ccxt's session expects
    server_version = "recon-sim/1.0"
    timeout = 30  # idle keep-alive connections are closed after this many seconds
    # One send per response (headers and body together) and no Nagle delay: otherwise every
    # keep-alive request waits for a delayed ACK (~40 ms on Linux loopback).
    wbufsize = -1
    disable_nagle_algorithm = True

    server: "_HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and the demo own stdout
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    # ---- plumbing ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict | None = None, declared_length: int | None = None) -> None:
        headers = dict(headers or {})
        self.send_response_only(status)
        self.send_header("Server", self.version_string())
        self.send_header("Date", headers.pop("Date", None) or self.date_time_string(
            self.server.exchange.server_time() / 1000))
        self.send_header("Content-Type", content_type if content_type != "application/json"
                         else "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(declared_length if declared_length is not None else len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _send_json(self, status: int, payload: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers)

    def _read_body(self) -> str:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length).decode("utf-8", "replace") if length else ""

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query_raw = parts.path, parts.query
        body_raw = self._read_body()
        exchange = self.server.exchange
        try:
            if path.startswith("/_control"):
                return self._control(method, path, body_raw)
            exchange.count_request(method, path)
            fault = exchange.take_fault(method, path) if path.startswith("/fapi") else None
            if fault is not None and fault.kind == "latency":
                time.sleep(float(fault.params.get("delay_ms", 1000)) / 1000)
                fault = None
            if fault is not None and fault.kind == "drop":
                self.close_connection = True  # no response at all
                return None
            if fault is not None and fault.kind in ("rate_limit", "ban"):
                retry_after = str(fault.params.get("retry_after_s", 1))
                status = 429 if fault.kind == "rate_limit" else 418
                msg = ("Too many requests; current limit of IP(127.0.0.1) is 2400 requests per "
                       "minute. Please use the websocket for live updates to avoid polling the API."
                       if status == 429 else
                       f"Way too many requests; IP(127.0.0.1) banned until {now_ms() + 1000 * int(float(retry_after))}. "
                       "Please use the websocket for live updates to avoid bans.")
                return self._send_json(status, {"code": -1003, "msg": msg}, {"Retry-After": retry_after})
            if fault is not None and fault.kind == "server_error":
                status = int(fault.params.get("status", 503))
                if fault.params.get("json"):
                    return self._send_json(status, {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."})
                html = f"<html><head><title>{status}</title></head><body><h1>{status} {self.responses.get(status, ('Error',))[0]}</h1></body></html>"
                return self._send(status, html.encode(), "text/html")
            params = dict(parse_qsl(query_raw, keep_blank_values=True))
            if method in ("POST", "PUT") and body_raw:
                params.update(parse_qsl(body_raw, keep_blank_values=True))
            status, used, wait_s = exchange.charge_weight(method, path, params)
            if status != 200:
                return self._limit_answer(status, wait_s)
            headers: dict[str, str] = {}
            state_source = None
            if fault is not None and fault.kind == "stale":
                frozen_at = fault.params["frozen_at"]
                age_s = float(fault.params.get("age_s", 60))
                state_source = fault.params["frozen"]
                headers["Date"] = formatdate(frozen_at / 1000 - age_s, usegmt=True)
                headers["Age"] = str(int(age_s + (now_ms() - frozen_at) / 1000))
            payload = self._route(method, path, query_raw, body_raw, params, state_source)
            payload = self._apply_payload_fault(fault, payload)
            headers["X-MBX-USED-WEIGHT-1M"] = str(used)
            body = json.dumps(payload, separators=(",", ":")).encode()
            if fault is not None and fault.kind == "malformed_json":
                body = body[: max(1, len(body) // 2)]  # cut mid-document, honest length
                return self._send(200, body, headers=headers)
            if fault is not None and fault.kind == "truncated":
                self.close_connection = True  # promise the whole body, send half, hang up
                return self._send(200, body[: len(body) // 2], headers=headers, declared_length=len(body))
            return self._send_json(200, payload, headers)
        except SimError as exc:
            return self._send_json(exc.http_status, exc.body())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return None
        except Exception as exc:  # a bug in the simulator: say so as Binance's -1000
            return self._send_json(500, {"code": -1000, "msg": f"simulator error: {type(exc).__name__}: {exc}"})

    def _limit_answer(self, status: int, wait_s: float) -> None:
        retry_after = str(max(1, math.ceil(wait_s)))
        limit = self.server.exchange.weight_limit
        msg = (f"Too many requests; current limit of IP(127.0.0.1) is {limit} requests per "
               "minute. Please use the websocket for live updates to avoid polling the API."
               if status == 429 else
               f"Way too many requests; IP(127.0.0.1) banned until "
               f"{now_ms() + int(wait_s * 1000)}. Please use the websocket for live updates to "
               "avoid bans.")
        return self._send_json(status, {"code": -1003, "msg": msg}, {"Retry-After": retry_after})

    @staticmethod
    def _apply_payload_fault(fault: Fault | None, payload: Any) -> Any:
        if fault is None:
            return payload
        if fault.kind == "empty":
            if isinstance(payload, list):
                return []
            if isinstance(payload, dict):
                for key in ("positions", "symbols", "assets"):
                    if key in payload:
                        payload[key] = []
            return payload
        if fault.kind == "corrupt_rows":
            return _corrupt_rows(payload, fault.params)
        if fault.kind == "bad_field":
            name = fault.params["field"]
            items = payload if isinstance(payload, list) else [payload]
            if isinstance(payload, dict) and name not in payload:
                items = [x for key in ("symbols", "positions", "assets") for x in payload.get(key, [])]
            for item in items:
                if isinstance(item, dict):
                    if "value" in fault.params:
                        item[name] = fault.params["value"]
                    else:
                        item.pop(name, None)
        return payload

    # ---- authentication ----------------------------------------------------------------------
    def _authenticate(self, method: str, query_raw: str, body_raw: str, params: dict) -> Account:
        api_key = self.headers.get("X-MBX-APIKEY")
        if not api_key or not _API_KEY_RE.match(api_key):
            raise SimError(-2014, "API-key format invalid.", 401)
        account = self.server.exchange.account_by_key(api_key)
        if account is None:
            raise SimError(-2015, "Invalid API-key, IP, or permissions for action, request ip: 127.0.0.1", 401)
        if "timestamp" not in params:
            raise SimError(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        if "signature" not in params or not params["signature"]:
            raise SimError(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
        try:
            timestamp = int(params["timestamp"])
            recv_window = int(params.get("recvWindow", _DEFAULT_RECV_WINDOW))
        except ValueError:
            raise SimError(-1100, "Illegal characters found in parameter 'timestamp'.") from None
        if recv_window > 60000:
            raise SimError(-1131, "recvWindow must be less than 60000")
        server_time = self.server.exchange.server_time()
        if timestamp > server_time + 1000 or server_time - timestamp > recv_window:
            raise SimError(-1021, "Timestamp for this request is outside of the recvWindow.")
        # Binance signs totalParams = query string + request body, without the signature itself.
        total = query_raw + body_raw
        signed = "&".join(p for p in total.split("&") if not p.startswith("signature="))
        expected = hmac.new(account.secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, params["signature"].lower()):
            raise SimError(-1022, "Signature for this request is not valid.")
        return account

    # ---- the exchange API --------------------------------------------------------------------
    def _route(self, method: str, path: str, query_raw: str, body_raw: str, params: dict,
               frozen: dict | None) -> Any:
        exchange = self.server.exchange
        key = (method, path)
        if key not in _PUBLIC and key not in _SIGNED:
            known_path = any(p == path for _, p in _PUBLIC | _SIGNED)
            raise SimError(-1000, "Method not allowed" if known_path else "Not found",
                           405 if known_path else 404)
        if key == ("GET", "/fapi/v1/ping"):
            return {}
        if key == ("GET", "/fapi/v1/time"):
            return {"serverTime": exchange.server_time()}
        if key == ("GET", "/fapi/v1/exchangeInfo"):
            return exchange.exchange_info()
        if key == ("GET", "/fapi/v1/premiumIndex"):
            return exchange.premium_index(params.get("symbol") or None)
        if key == ("GET", "/fapi/v1/klines"):
            return exchange.klines(params.get("symbol"), params.get("interval"),
                                   params.get("startTime"), params.get("endTime"),
                                   params.get("limit"))
        account = self._authenticate(method, query_raw, body_raw, params)
        source = frozen[account.name] if frozen is not None and account.name in frozen else account
        symbol = params.get("symbol") or None
        with exchange.lock:
            if key == ("GET", "/fapi/v1/openOrders"):
                return exchange.open_orders(source, symbol)
            if key == ("GET", "/fapi/v1/openAlgoOrders"):
                return exchange.open_algo_orders(source, symbol)
            if key == ("GET", "/fapi/v1/algoOrder"):
                algo = exchange.find_algo_order(source, params.get("algoId"),
                                                params.get("clientAlgoId"))
                return exchange.algo_order_payload(algo, source)
            if key == ("DELETE", "/fapi/v1/algoOrder"):
                algo = exchange.cancel_algo_order(account, params.get("algoId"),
                                                  params.get("clientAlgoId"))
                return {"algoId": algo.algo_id, "clientAlgoId": algo.client_algo_id,
                        "code": "200", "msg": "success"}
            if key == ("POST", "/fapi/v1/algoOrder"):
                if params.get("algoType") != "CONDITIONAL":
                    raise SimError(-1116, "Invalid algoType.")
                algo = exchange.place_algo_order(
                    account, symbol, params.get("side"), params.get("orderType"),
                    params.get("quantity"), params.get("triggerPrice"), params.get("price"),
                    params.get("clientAlgoId"), _bool(params.get("reduceOnly")))
                return exchange.algo_order_payload(algo, account)
            if key == ("GET", "/fapi/v3/positionRisk"):
                return exchange.position_risk(source, symbol)
            if key == ("GET", "/fapi/v1/leverageBracket"):
                return exchange.leverage_brackets(symbol)
            if key == ("GET", "/fapi/v3/account"):
                return exchange.account_info(source)
            if key == ("GET", "/fapi/v1/income"):
                return exchange.income(source, symbol, params.get("incomeType"),
                                       params.get("startTime"), params.get("endTime"),
                                       params.get("limit"))
            if key == ("GET", "/fapi/v1/userTrades"):
                return exchange.user_trades(source, symbol, params.get("orderId"),
                                            params.get("startTime"), params.get("endTime"),
                                            params.get("fromId"), params.get("limit"))
            if key == ("GET", "/fapi/v1/order"):
                exchange.market(symbol)
                order = exchange.query_order(source, params.get("orderId"),
                                             params.get("origClientOrderId"), symbol)
                return exchange.order_payload(order)
            if key == ("DELETE", "/fapi/v1/order"):
                exchange.market(symbol)
                order = exchange.cancel_order(account, params.get("orderId"),
                                              params.get("origClientOrderId"))
                return exchange.order_payload(order, response=True)
            if key == ("POST", "/fapi/v1/order"):
                if (params.get("type") or "").upper() in ALGO_ORDER_TYPES:
                    raise SimError(-4120, "Order type not supported for this endpoint. Please use "
                                          "the Algo Order API endpoints instead.")
                order = exchange.place_order(
                    account, symbol, params.get("side"), params.get("type"), params.get("quantity"),
                    params.get("price"), params.get("newClientOrderId"),
                    _bool(params.get("reduceOnly")), params.get("timeInForce"),
                    position_side=params.get("positionSide"))
                return exchange.order_payload(order, response=True)
        raise SimError(-1000, "Not found", 404)  # unreachable

    # ---- control surface ---------------------------------------------------------------------
    def _control(self, method: str, path: str, body_raw: str) -> None:
        exchange = self.server.exchange
        op = path.removeprefix("/_control").strip("/")
        try:
            if method == "GET" and op == "state":
                return self._send_json(200, exchange.dump())
            if method == "GET" and op == "requests":
                return self._send_json(200, dict(exchange.request_counts))
            if method == "GET" and op == "credentials":
                return self._send_json(200, credentials(exchange))
            if method != "POST" or op not in _CONTROL_OPS:
                return self._send_json(404, {"error": f"unknown control operation {method} {op!r}; "
                                                      f"POST one of {sorted(_CONTROL_OPS)}"})
            args = json.loads(body_raw) if body_raw.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("the body must be a JSON object of keyword arguments")
            return self._send_json(200, control(exchange, op, args))
        except SimError as exc:
            return self._send_json(400, {"error": exc.msg, "code": exc.code})
        except (TypeError, ValueError, KeyError) as exc:
            return self._send_json(400, {"error": f"{type(exc).__name__}: {exc}"})


def credentials(exchange: SimExchange) -> dict:
    """The simulated accounts' test keys, shaped for RECON_EXCHANGE_CREDENTIALS."""
    with exchange.lock:
        return {name: {"apiKey": a.api_key, "secret": a.secret} for name, a in exchange.accounts.items()}


def control(exchange: SimExchange, op: str, args: dict) -> Any:
    """Run one control operation (the same for HTTP and in-process callers); JSON-able result."""
    if op == "reset":
        exchange.reset()
        return {"ok": True}
    if op == "scenario":
        from recon_assets.simulator.scenarios import load_scenario

        scenario = load_scenario(exchange, args["name"])
        return {"ok": True, "scenario": scenario.name, "accounts": sorted(exchange.accounts),
                "expected": scenario.expected}
    if op == "add_account":
        account = exchange.add_account(**args)
        return {"ok": True, "account": account.name}
    if op == "add_market":
        market = exchange.add_market(**args)
        return {"ok": True, "symbol": market.symbol}
    if op == "set_mark_price":
        exchange.set_mark_price(**args)
        return {"ok": True}
    if op == "place_algo_order":
        return exchange.algo_order_payload(exchange.place_algo_order(**args))
    if op == "trigger_algo_order":
        return exchange.order_payload(exchange.trigger_algo_order(**args))
    if op == "cancel_algo_order":
        return exchange.algo_order_payload(exchange.cancel_algo_order(**args))
    if op == "set_rate_limits":
        exchange.set_rate_limits(**args)
        return {"ok": True}
    if op == "set_clock_offset":
        exchange.set_clock_offset(**args)
        return {"ok": True}
    if op == "set_listing_delay":
        exchange.set_listing_delay(**args)
        return {"ok": True}
    if op == "set_fee_asset":
        exchange.set_fee_asset(**args)
        return {"ok": True}
    if op == "set_position_mode":
        exchange.set_position_mode(**args)
        return {"ok": True}
    if op == "place_order":
        return exchange.order_payload(exchange.place_order(**args))
    if op == "fill_order":
        return exchange.trade_payload(exchange.fill_order(**args))
    if op == "cancel_order":
        return exchange.order_payload(exchange.cancel_order(**args))
    if op == "expire_order":
        return exchange.order_payload(exchange.cancel_order(status="EXPIRED", **args))
    if op == "close_position":
        order = exchange.close_position(**args)
        return exchange.order_payload(order) if order else {"ok": True, "order": None}
    if op == "liquidate":
        order = exchange.liquidate(**args)
        return exchange.order_payload(order) if order else {"ok": True, "order": None}
    if op == "fault":
        fault = exchange.inject_fault(**args)
        return {"ok": True, "kind": fault.kind, "path": fault.path, "count": fault.count}
    if op == "clear_faults":
        exchange.clear_faults()
        return {"ok": True}
    if op == "reset_requests":
        return exchange.reset_request_counts()
    raise ValueError(f"unknown control operation {op!r}")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, exchange: SimExchange):
        super().__init__(address, _Handler)
        self.exchange = exchange

    def handle_error(self, request, client_address):
        # A client that hung up mid-answer (a capped read, a timeout) is no server error.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class SimulatorServer:
    """The simulator on a loopback port, in a background thread of this process.

    >>> sim = SimulatorServer(port=0, scenario="clean"); url = sim.start()
    >>> sim.exchange.fill_order("acct1", client_order_id="rc.ALP.t1.X1")
    >>> sim.stop()
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", scenario: str | None = None,
                 exchange: SimExchange | None = None):
        # It takes any API key and moves money on request: never reachable from another host
        # (a deployment must not be able to point anything real at it, nor anyone else use it).
        if not is_loopback_host(host):
            raise ValueError(f"the exchange simulator serves this machine only: host {host!r} is "
                             "not a loopback address (use 127.0.0.1, ::1 or localhost)")
        self.host = host
        self.port = port
        self.exchange = exchange or SimExchange()
        self.scenario = None
        if scenario:
            self.load_scenario(scenario)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def load_scenario(self, name: str):
        from recon_assets.simulator.scenarios import load_scenario

        self.scenario = load_scenario(self.exchange, name)
        return self.scenario

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the simulator is not running")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def credentials(self) -> dict:
        return credentials(self.exchange)

    def start(self) -> str:
        """Start serving; returns the base URL (e.g. http://127.0.0.1:40123)."""
        if self._httpd is not None:
            return self.url
        self._httpd = _HTTPServer((self.host, self.port), self.exchange)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="recon-simulator", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd, self._thread = None, None

    def __enter__(self) -> "SimulatorServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """`recon simulator --port P [--scenario NAME] [--host 127.0.0.1]`."""
    from recon_assets.simulator.scenarios import SCENARIOS

    parser = argparse.ArgumentParser(prog="recon simulator",
                                     description="A loopback Binance USD-M futures exchange for tests and the demo.")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help="scenario to load at start")
    args = parser.parse_args(argv)
    server = SimulatorServer(port=args.port, host=args.host, scenario=args.scenario)
    with stop_on_signals() as stop:
        url = server.start()
        accounts = ", ".join(sorted(server.exchange.accounts)) or "none"
        print(f"recon simulator listening on {url} (scenario: {args.scenario or 'none'}; "
              f"accounts: {accounts}; test keys at GET {url}/_control/credentials)", flush=True)
        try:
            while not stop.wait(0.5):  # a short wait, so the signal handler gets to run
                pass
        finally:
            server.stop()
    print("recon simulator stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
