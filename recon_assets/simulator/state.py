"""The simulated exchange: markets, accounts, orders, fills and positions, and their Binance
USD-M payloads.

Every change of a position goes through a fill, so a position is always the signed sum of its
account's fills on that symbol (`SimExchange.check_consistency` verifies it). Quantities and
prices are `Decimal`; payloads render them as JSON strings, times as epoch milliseconds, sides as
BUY/SELL and `positionSide` BOTH in one-way mode, LONG/SHORT per leg in hedge mode
(`set_position_mode`), like Binance's documented responses.
"""

from __future__ import annotations

import copy
import itertools
import random
import re
import string
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from recon_assets.core.request_weights import WEIGHT_LIMIT_PER_MINUTE, request_weight
from typing import Any

D = Decimal
ZERO = D("0")
TAKER_FEE = D("0.0005")
MAKER_FEE = D("0.0002")
# Binance USD-M's rule for newClientOrderId.
CLIENT_ORDER_ID_RE = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
FAR_DELIVERY = 4133404800000  # Binance's delivery date of perpetual contracts
# Binance USD-M's query retention for GET /fapi/v1/order.
ORDER_RETENTION_MS = 90 * 86_400_000
UNFILLED_RETENTION_MS = 3 * 86_400_000
# Income history (GET /fapi/v1/income) is kept for 3 months.
INCOME_RETENTION_MS = 90 * 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


def fmt(value: Decimal, places: int | None = None) -> str:
    """A decimal as Binance writes it: a plain string, no exponent."""
    if places is not None:
        value = value.quantize(D(1).scaleb(-places))
    text = format(value, "f")
    return text if text != "-0" else "0"


def random_suffix(n: int = 16) -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=n))


class SimError(Exception):
    """A request the exchange rejects: HTTP status plus Binance's {"code", "msg"} body."""

    def __init__(self, code: int, msg: str, http_status: int = 400):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.http_status = http_status

    def body(self) -> dict:
        return {"code": self.code, "msg": self.msg}


@dataclass
class Market:
    symbol: str  # exchange id, e.g. BTCUSDT
    base: str
    mark_price: Decimal
    step_size: Decimal
    tick_size: Decimal
    quote: str = "USDT"
    min_qty: Decimal | None = None
    maint_margin_ratio: Decimal = D("0.004")
    # (time ms, mark price) each time the price was set, oldest first: klines and the price
    # of a fee asset at a fill's time are read from it.
    price_history: list[tuple[int, Decimal]] = field(default_factory=list)

    def price_at(self, t: int) -> Decimal:
        """The mark price in force at `t` (the first one before any change)."""
        price = self.price_history[0][1] if self.price_history else self.mark_price
        for at, value in self.price_history:
            if at > t:
                break
            price = value
        return price

    @property
    def quantity_precision(self) -> int:
        return max(0, -self.step_size.normalize().as_tuple().exponent)

    @property
    def price_precision(self) -> int:
        return max(0, -self.tick_size.normalize().as_tuple().exponent)

    @property
    def unified(self) -> str:
        """The ccxt symbol, e.g. BTC/USDT:USDT."""
        return f"{self.base}/{self.quote}:{self.quote}"


DEFAULT_MARKETS = (
    # symbol, base, mark price, step size, tick size
    ("BTCUSDT", "BTC", "60000.00", "0.001", "0.10"),
    ("ETHUSDT", "ETH", "3000.00", "0.001", "0.01"),
    ("SOLUSDT", "SOL", "150.0000", "1", "0.0100"),
    ("BNBUSDT", "BNB", "550.000", "0.01", "0.010"),
    ("XRPUSDT", "XRP", "0.6000", "0.1", "0.0001"),
    ("DOGEUSDT", "DOGE", "0.150000", "1", "0.000010"),
    ("ADAUSDT", "ADA", "0.45000", "1", "0.00010"),
    ("LINKUSDT", "LINK", "15.000", "0.01", "0.001"),
)


@dataclass
class Order:
    order_id: int
    symbol: str
    client_order_id: str
    side: str  # BUY / SELL
    type: str  # LIMIT / MARKET
    orig_qty: Decimal
    price: Decimal  # 0 for market orders
    time_in_force: str
    reduce_only: bool
    time: int
    update_time: int
    status: str = "NEW"  # NEW / PARTIALLY_FILLED / FILLED / CANCELED / EXPIRED
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    position_side: str = "BOTH"  # BOTH (one-way mode), or the leg: LONG / SHORT (hedge mode)

    @property
    def remaining(self) -> Decimal:
        return self.orig_qty - self.executed_qty

    @property
    def is_open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")

    def avg_price(self) -> Decimal:
        return self.cum_quote / self.executed_qty if self.executed_qty else ZERO


# Conditional order types: served by the Algo Service endpoints (/fapi/v1/algoOrder,
# /fapi/v1/openAlgoOrders) since December 2025; POST /fapi/v1/order refuses them (-4120).
ALGO_ORDER_TYPES = ("STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                    "TRAILING_STOP_MARKET")
ALGO_OPEN_STATUSES = ("NEW",)


@dataclass
class AlgoOrder:
    """A conditional order held by the Algo Service until its trigger; then a regular order
    (`actual_order_id`) is placed in the matching engine and the algo order is FINISHED."""

    algo_id: int
    client_algo_id: str
    symbol: str
    side: str
    order_type: str
    quantity: Decimal
    trigger_price: Decimal
    price: Decimal  # 0 for the *_MARKET types
    reduce_only: bool
    create_time: int
    update_time: int
    status: str = "NEW"  # NEW / CANCELED / TRIGGERED / FINISHED / REJECTED / EXPIRED
    actual_order_id: int | None = None
    trigger_time: int = 0

    @property
    def is_open(self) -> bool:
        return self.status in ALGO_OPEN_STATUSES


@dataclass
class Trade:
    trade_id: int
    order_id: int
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    commission: Decimal
    realized_pnl: Decimal
    maker: bool
    time: int
    commission_asset: str = "USDT"
    position_side: str = "BOTH"


@dataclass
class Position:
    amt: Decimal = ZERO  # signed: > 0 long, < 0 short
    entry_price: Decimal = ZERO
    update_time: int = 0


POSITION_SIDES = ("BOTH", "LONG", "SHORT")


def leg_key(symbol: str, position_side: str = "BOTH") -> str:
    """The key of a position in Account.positions: the symbol (one-way mode), or symbol:LEG."""
    return symbol if position_side == "BOTH" else f"{symbol}:{position_side}"


def leg_of(key: str) -> tuple[str, str]:
    """(symbol, position side) of an Account.positions key."""
    symbol, _, side = key.partition(":")
    return symbol, side or "BOTH"


@dataclass
class Account:
    name: str
    api_key: str
    secret: str
    initial_balance: Decimal = D("100000")
    orders: dict[int, Order] = field(default_factory=dict)
    algo_orders: dict[int, AlgoOrder] = field(default_factory=dict)
    trades: dict[str, list[Trade]] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    realized_pnl: Decimal = ZERO
    commissions: Decimal = ZERO  # in USDT, whatever asset they were paid in
    update_time: int = 0
    # The asset commissions are paid in: USDT, or e.g. BNB ("pay fees with BNB"), charged at
    # the asset's price at the fill's time (1 USDT per unit when the exchange lists no price).
    fee_asset: str = "USDT"
    # Hedge mode (Binance's dual-side position mode): a LONG and a SHORT leg per symbol, each
    # order naming its leg (positionSide); one-way mode: one position per symbol (BOTH).
    dual_side: bool = False

    @property
    def wallet_balance(self) -> Decimal:
        return self.initial_balance + self.realized_pnl - self.commissions


@dataclass
class Fault:
    """One injected fault. `path` None matches every /fapi path; `count` None means until cleared.

    kinds: latency (delay_ms), rate_limit (429, retry_after_s), ban (418, retry_after_s),
    server_error (status 500/502/503/504, json True for a Binance -1001 body), malformed_json,
    truncated (the body is cut and the connection closed early), drop (connection closed
    without a response), stale (serve the state frozen when the fault was injected, `age_s` old,
    with Date/Age headers saying so), bad_field (set `field` to `value`, or delete it when
    `value` is absent, in each item of the response), empty (a 200 with no items),
    corrupt_rows (one item, `index` (default 0; None: every item), gets `set` {field: value}
    and loses the fields in `drop`; with `duplicate` true a copy so changed is added after it
    instead, as a second row with the same id; `row` first appends that whole object as one
    more item). Values may be any JSON (NaN and Infinity are sent as JavaScript's bare tokens).
    """

    kind: str
    path: str | None = None
    method: str | None = None
    count: int | None = 1
    params: dict = field(default_factory=dict)

    KINDS = ("latency", "rate_limit", "ban", "server_error", "malformed_json", "truncated",
             "drop", "stale", "bad_field", "empty", "corrupt_rows")

    def matches(self, method: str, path: str) -> bool:
        if self.path is not None and self.path != path:
            return False
        return self.method is None or self.method.upper() == method.upper()


def _dec(raw: Any, name: str) -> Decimal:
    try:
        value = D(str(raw))
    except (InvalidOperation, ValueError):
        raise SimError(-1100, f"Illegal characters found in parameter '{name}'; legal range is "
                              f"'^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'.") from None
    if not value.is_finite():
        raise SimError(-1100, f"Illegal characters found in parameter '{name}'.")
    return value


class SimExchange:
    """The state of the simulated exchange; every method takes the lock."""

    def __init__(self, markets=DEFAULT_MARKETS):
        self.lock = threading.RLock()
        self.markets: dict[str, Market] = {}
        self.accounts: dict[str, Account] = {}  # by name
        self.faults: list[Fault] = []
        self.request_counts: dict[str, int] = {}
        # How far the exchange's clock is ahead of this machine's (ms): a local clock that is
        # off, seen from the exchange (signed requests outside recvWindow fail with -1021).
        self.clock_offset_ms = 0
        # How long a new order takes to show up (ms): Binance's matching engine has it, but its
        # open orders and order queries (-2013 Order does not exist) may lag behind for a moment.
        self.listing_delay_ms = 0
        # The per-IP request-weight limit (Binance USD-M: 2400 per clock minute) and its
        # enforcement: a 429 when spent, a 418 ban for a request sent before a 429's Retry-After
        # ended, longer for each ban (ban_base_s doubling, at most 3 days).
        self.weight_limit = WEIGHT_LIMIT_PER_MINUTE
        self.weight_window_s = 60.0
        self.weight_anchor = 0.0  # windows start at multiples of weight_window_s from here
        self.ban_base_s = 120.0
        self._window, self.used_weight = -1, 0
        self.blocked_until = self.banned_until = 0.0
        self.bans = 0
        self.limit_answers: dict[int, int] = {}  # 429 / 418 answers given
        self._order_ids = itertools.count(8_389_765_000)
        self._algo_ids = itertools.count(4_000_000_001)  # a namespace of their own, like Binance
        self._trade_ids: dict[str, itertools.count] = {}
        for symbol, base, mark, step, tick in markets:
            self.add_market(symbol, base, mark, step, tick)

    # ---- setup -------------------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.__init__()

    def add_market(self, symbol: str, base: str, mark_price, step_size="0.001", tick_size="0.01",
                   min_qty=None) -> Market:
        with self.lock:
            market = Market(symbol, base, D(str(mark_price)), D(str(step_size)), D(str(tick_size)),
                            min_qty=D(str(min_qty)) if min_qty is not None else None)
            if market.min_qty is None:
                market.min_qty = market.step_size
            market.price_history.append((0, market.mark_price))
            self.markets[symbol] = market
            self._trade_ids.setdefault(symbol, itertools.count(500_000_001))
            return market

    def add_account(self, name: str, api_key: str | None = None, secret: str | None = None,
                    balance="100000") -> Account:
        with self.lock:
            account = Account(name, api_key or f"simkey{name}", secret or f"simsecret{name}",
                              initial_balance=D(str(balance)), update_time=now_ms())
            self.accounts[name] = account
            return account

    def account(self, name: str) -> Account:
        try:
            return self.accounts[name]
        except KeyError:
            raise SimError(-1000, f"no simulated account {name!r}", 404) from None

    def account_by_key(self, api_key: str) -> Account | None:
        for account in self.accounts.values():
            if account.api_key == api_key:
                return account
        return None

    def market(self, symbol: str | None) -> Market:
        if not symbol:
            raise SimError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        try:
            return self.markets[symbol]
        except KeyError:
            raise SimError(-1121, "Invalid symbol.") from None

    def set_mark_price(self, symbol: str, price, at_ms: int | None = None) -> None:
        with self.lock:
            market = self.market(symbol)
            market.mark_price = D(str(price))
            market.price_history.append((at_ms if at_ms is not None else now_ms(),
                                         market.mark_price))

    def set_rate_limits(self, weight_per_minute: int = WEIGHT_LIMIT_PER_MINUTE,
                        window_s: float = 60.0, ban_base_s: float = 120.0) -> None:
        """Set the weight limit (per window starting now, for tests) and the first ban's length."""
        with self.lock:
            self.weight_limit, self.weight_window_s = int(weight_per_minute), float(window_s)
            self.ban_base_s = float(ban_base_s)
            self.weight_anchor = time.time() if window_s != 60.0 else 0.0
            self._window, self.used_weight = -1, 0
            self.blocked_until = self.banned_until = 0.0

    def charge_weight(self, method: str, path: str, params: dict) -> tuple[int, int, float]:
        """Charge one request's weight: (HTTP status 200 / 429 / 418, weight used in this
        window, Retry-After seconds)."""
        with self.lock:
            now = time.time()
            window = int((now - self.weight_anchor) // self.weight_window_s)
            if window != self._window:
                self._window, self.used_weight = window, 0
            if self.banned_until > now:
                return self._answer(418, self.banned_until - now)
            if self.blocked_until > now:  # did not back off after a 429: banned
                self.bans += 1
                self.banned_until = now + min(self.ban_base_s * 2 ** (self.bans - 1), 3 * 86_400)
                return self._answer(418, self.banned_until - now)
            self.used_weight += request_weight(method, path, params)
            if self.used_weight > self.weight_limit:
                end = self.weight_anchor + (window + 1) * self.weight_window_s
                self.blocked_until = end
                return self._answer(429, end - now)
            return 200, self.used_weight, 0.0

    def _answer(self, status: int, wait_s: float) -> tuple[int, int, float]:
        self.limit_answers[status] = self.limit_answers.get(status, 0) + 1
        return status, self.used_weight, wait_s

    def server_time(self) -> int:
        """The exchange's clock (ms): this machine's plus `clock_offset_ms`."""
        return now_ms() + self.clock_offset_ms

    def set_clock_offset(self, offset_ms: int) -> None:
        """Move the exchange's clock `offset_ms` ahead of this machine's (negative: behind)."""
        with self.lock:
            self.clock_offset_ms = int(offset_ms)

    def set_listing_delay(self, delay_ms: int) -> None:
        """New orders are not listed (open orders, order queries) until `delay_ms` after they
        were placed, as Binance's API may lag behind its matching engine."""
        with self.lock:
            self.listing_delay_ms = int(delay_ms)

    def listed(self, order: Order) -> bool:
        """Whether the API shows the order yet (see `set_listing_delay`)."""
        return now_ms() >= order.time + self.listing_delay_ms

    def set_fee_asset(self, account: str, asset: str) -> None:
        """Charge `account`'s commissions in `asset` from now on (e.g. BNB)."""
        with self.lock:
            self.account(account).fee_asset = asset.upper()

    def asset_price(self, asset: str, t: int) -> Decimal | None:
        """The USDT price of `asset` at `t` from its <ASSET>USDT market, None when unlisted."""
        if asset.upper() in ("USDT", "USD"):
            return D(1)
        market = self.markets.get(f"{asset.upper()}USDT")
        return market.price_at(t) if market is not None else None

    # ---- faults ------------------------------------------------------------------------------
    def inject_fault(self, kind: str, path: str | None = None, method: str | None = None,
                     count: int | None = 1, **params) -> Fault:
        if kind not in Fault.KINDS:
            raise SimError(-1000, f"unknown fault kind {kind!r}; one of {', '.join(Fault.KINDS)}")
        with self.lock:
            fault = Fault(kind, path, method, count, dict(params))
            if kind == "stale":
                fault.params["frozen"] = copy.deepcopy(self.accounts)
                fault.params["frozen_at"] = now_ms()
            self.faults.append(fault)
            return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The first fault matching this request, used up by one."""
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def count_request(self, method: str, path: str) -> None:
        with self.lock:
            key = f"{method} {path}"
            self.request_counts[key] = self.request_counts.get(key, 0) + 1

    def reset_request_counts(self) -> dict[str, int]:
        with self.lock:
            counts, self.request_counts = self.request_counts, {}
            return counts

    # ---- trading -----------------------------------------------------------------------------
    def _check_qty(self, market: Market, qty: Decimal) -> None:
        if qty <= 0:
            raise SimError(-4003, "Quantity less than or equal to zero.")
        if qty % market.step_size != 0:
            raise SimError(-1111, "Precision is over the maximum defined for this asset.")
        if qty < market.min_qty:
            raise SimError(-4003, "Quantity less than or equal to zero.")

    def place_order(self, account: str | Account, symbol: str, side: str, type: str = "LIMIT",
                    quantity=None, price=None, client_order_id: str | None = None,
                    reduce_only: bool = False, time_in_force: str | None = None,
                    at_ms: int | None = None, position_side: str | None = None) -> Order:
        """Place an order as the exchange would: a MARKET order (or a LIMIT order that crosses
        the mark price) fills at once; a LIMIT order otherwise rests as NEW. In hedge mode the
        order names its leg (`position_side` LONG or SHORT): SELL on LONG and BUY on SHORT
        close it (never past its size), and reduceOnly is not accepted, as on Binance."""
        with self.lock:
            acct = account if isinstance(account, Account) else self.account(account)
            market = self.market(symbol)
            side = (side or "").upper()
            if side not in ("BUY", "SELL"):
                raise SimError(-1117, "Invalid side.")
            type = (type or "").upper()
            if type not in ("LIMIT", "MARKET"):
                raise SimError(-1116, "Invalid orderType.")
            if quantity is None:
                raise SimError(-1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.")
            qty = _dec(quantity, "quantity")
            self._check_qty(market, qty)
            if type == "LIMIT":
                if price is None:
                    raise SimError(-1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed.")
                limit = _dec(price, "price")
                if limit <= 0 or limit % market.tick_size != 0:
                    raise SimError(-4014, "Price not increased by tick size.")
                tif = (time_in_force or "GTC").upper()
            else:
                limit = ZERO
                tif = "GTC"
            if client_order_id is None:
                client_order_id = "x-sim" + random_suffix(22)
            if not CLIENT_ORDER_ID_RE.match(client_order_id):
                raise SimError(-1100, "Illegal characters found in parameter 'newClientOrderId'; "
                                      "legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
            if any(o.client_order_id == client_order_id and o.is_open for o in acct.orders.values()):
                raise SimError(-4116, "ClientOrderId is duplicated.")
            leg = (position_side or ("" if acct.dual_side else "BOTH")).upper()
            if leg not in POSITION_SIDES or (leg == "BOTH") == acct.dual_side:
                raise SimError(-4061, "Order's position side does not match user's setting.")
            position = acct.positions.get(leg_key(symbol, leg), Position())
            if acct.dual_side:
                if reduce_only:
                    raise SimError(-1106, "Parameter 'reduceonly' sent when not required.")
                closes = (leg == "LONG" and side == "SELL") or (leg == "SHORT" and side == "BUY")
                if closes and qty > abs(position.amt):
                    raise SimError(-2022, "ReduceOnly Order is rejected.")
            elif reduce_only:
                reduces = (position.amt > 0 and side == "SELL") or (position.amt < 0 and side == "BUY")
                if not reduces or qty > abs(position.amt):
                    raise SimError(-2022, "ReduceOnly Order is rejected.")
            t = at_ms if at_ms is not None else now_ms()
            order = Order(next(self._order_ids), symbol, client_order_id, side, type, qty, limit,
                          tif, reduce_only, t, t, position_side=leg)
            acct.orders[order.order_id] = order
            crosses = type == "MARKET" or (side == "BUY" and limit >= market.mark_price) or (
                side == "SELL" and limit <= market.mark_price)
            if crosses:
                fill_price = market.mark_price if type == "MARKET" else min(limit, market.mark_price) \
                    if side == "BUY" else max(limit, market.mark_price)
                self._fill(acct, order, order.remaining, fill_price, t, maker=False)
            return order

    # ---- conditional (algo) orders ------------------------------------------------------------
    def place_algo_order(self, account: str | Account, symbol: str, side: str, order_type: str,
                         quantity, trigger_price, price=None, client_algo_id: str | None = None,
                         reduce_only: bool = False, at_ms: int | None = None) -> AlgoOrder:
        """POST /fapi/v1/algoOrder (algoType CONDITIONAL): rests until `trigger_algo_order`."""
        with self.lock:
            acct = account if isinstance(account, Account) else self.account(account)
            market = self.market(symbol)
            side, order_type = (side or "").upper(), (order_type or "").upper()
            if side not in ("BUY", "SELL"):
                raise SimError(-1117, "Invalid side.")
            if order_type not in ALGO_ORDER_TYPES:
                raise SimError(-1116, "Invalid orderType.")
            qty = _dec(quantity, "quantity")
            self._check_qty(market, qty)
            trigger = _dec(trigger_price, "triggerPrice")
            limit = _dec(price, "price") if price is not None else ZERO
            if order_type in ("STOP", "TAKE_PROFIT") and limit <= 0:
                raise SimError(-1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed.")
            client_algo_id = client_algo_id or "x-sim" + random_suffix(22)
            if not CLIENT_ORDER_ID_RE.match(client_algo_id):
                raise SimError(-1100, "Illegal characters found in parameter 'clientAlgoId'.")
            if any(a.client_algo_id == client_algo_id and a.is_open for a in acct.algo_orders.values()):
                raise SimError(-4116, "ClientOrderId is duplicated.")
            t = at_ms if at_ms is not None else now_ms()
            algo = AlgoOrder(next(self._algo_ids), client_algo_id, market.symbol, side, order_type,
                             qty, trigger, limit, reduce_only, t, t)
            acct.algo_orders[algo.algo_id] = algo
            return algo

    def find_algo_order(self, account: str | Account, algo_id=None,
                        client_algo_id: str | None = None) -> AlgoOrder:
        with self.lock:
            acct = account if isinstance(account, Account) else self.account(account)
            if algo_id is not None:
                try:
                    algo = acct.algo_orders.get(int(algo_id))
                except (TypeError, ValueError):
                    raise SimError(-1100, "Illegal characters found in parameter 'algoId'.") from None
            elif client_algo_id is not None:
                matches = [a for a in acct.algo_orders.values() if a.client_algo_id == client_algo_id]
                algo = max(matches, key=lambda a: a.algo_id) if matches else None
            else:
                raise SimError(-1102, "Either algoId or clientAlgoId must be sent.")
            if algo is None:
                raise SimError(-2013, "Order does not exist.")
            return algo

    def cancel_algo_order(self, account: str | Account, algo_id=None,
                          client_algo_id: str | None = None, at_ms: int | None = None) -> AlgoOrder:
        with self.lock:
            algo = self.find_algo_order(account, algo_id, client_algo_id)
            if not algo.is_open:
                raise SimError(-2011, "Unknown order sent.")
            algo.status, algo.update_time = "CANCELED", at_ms or now_ms()
            return algo

    def trigger_algo_order(self, account: str | Account, algo_id=None,
                           client_algo_id: str | None = None, at_ms: int | None = None) -> Order:
        """The trigger price is reached: a regular order (MARKET, or LIMIT at `price`) goes to
        the matching engine under the same client id, and the algo order is FINISHED when it
        fills (TRIGGERED while it rests)."""
        with self.lock:
            acct = account if isinstance(account, Account) else self.account(account)
            algo = self.find_algo_order(acct, algo_id, client_algo_id)
            if not algo.is_open:
                raise SimError(-2013, f"algo order {algo.algo_id} is {algo.status}, cannot trigger it")
            t = at_ms if at_ms is not None else now_ms()
            market_order = algo.order_type.endswith("_MARKET")
            order = self.place_order(acct, algo.symbol, algo.side,
                                     "MARKET" if market_order else "LIMIT", algo.quantity,
                                     None if market_order else algo.price, algo.client_algo_id,
                                     algo.reduce_only, at_ms=t)
            algo.actual_order_id, algo.trigger_time, algo.update_time = order.order_id, t, t
            algo.status = "TRIGGERED" if order.is_open else "FINISHED"
            return order

    def algo_order_payload(self, algo: AlgoOrder, acct: Account | None = None) -> dict:
        market = self.markets[algo.symbol]
        actual = acct.orders.get(algo.actual_order_id) if acct and algo.actual_order_id else None
        if actual is not None and algo.status == "TRIGGERED" and not actual.is_open:
            algo.status = "FINISHED"
        return {
            "algoId": algo.algo_id, "clientAlgoId": algo.client_algo_id, "algoType": "CONDITIONAL",
            "orderType": algo.order_type, "symbol": algo.symbol, "side": algo.side,
            "positionSide": "BOTH", "timeInForce": "GTC", "quantity": fmt(algo.quantity),
            "algoStatus": algo.status, "actualOrderId": str(algo.actual_order_id or ""),
            "actualPrice": fmt(actual.avg_price(), max(market.price_precision, 5)) if actual else "0",
            "triggerPrice": fmt(algo.trigger_price), "price": fmt(algo.price),
            "icebergQuantity": None, "selfTradePreventionMode": "EXPIRE_MAKER",
            "workingType": "CONTRACT_PRICE", "priceMatch": "NONE", "closePosition": False,
            "priceProtect": False, "reduceOnly": algo.reduce_only, "createTime": algo.create_time,
            "updateTime": algo.update_time, "triggerTime": algo.trigger_time, "goodTillDate": 0,
        }

    def open_algo_orders(self, acct: Account, symbol: str | None = None) -> list[dict]:
        with self.lock:
            if symbol is not None:
                self.market(symbol)
            return [self.algo_order_payload(a, acct)
                    for a in sorted(acct.algo_orders.values(), key=lambda a: a.algo_id)
                    if a.is_open and (symbol is None or a.symbol == symbol)]

    def find_order(self, account: str | Account, order_id=None, client_order_id: str | None = None,
                   symbol: str | None = None) -> Order:
        with self.lock:
            acct = account if isinstance(account, Account) else self.account(account)
            if order_id is not None:
                try:
                    order = acct.orders.get(int(order_id))
                except (TypeError, ValueError):
                    raise SimError(-1100, "Illegal characters found in parameter 'orderId'.") from None
            elif client_order_id is not None:
                matches = [o for o in acct.orders.values() if o.client_order_id == client_order_id]
                order = max(matches, key=lambda o: o.order_id) if matches else None
            else:
                raise SimError(-1102, "Either orderId or origClientOrderId must be sent.")
            if order is None or (symbol is not None and order.symbol != symbol):
                raise SimError(-2013, "Order does not exist.")
            return order

    def query_order(self, account: str | Account, order_id=None,
                    client_order_id: str | None = None, symbol: str | None = None) -> Order:
        """GET /fapi/v1/order with Binance's query retention: an order CANCELED or EXPIRED
        without a fill is not found 3 days after it was created, any order after 90 days."""
        with self.lock:
            order = self.find_order(account, order_id, client_order_id, symbol)
            if not self.listed(order):
                raise SimError(-2013, "Order does not exist.")
            age = now_ms() - order.time
            unfilled_gone = order.status in ("CANCELED", "EXPIRED") and order.executed_qty == 0
            if age > ORDER_RETENTION_MS or (unfilled_gone and age > UNFILLED_RETENTION_MS):
                raise SimError(-2013, "Order does not exist.")
            return order

    def fill_order(self, account: str | Account, order_id=None, client_order_id: str | None = None,
                   qty=None, price=None, at_ms: int | None = None) -> Trade:
        """Fill (all of the remaining, or `qty` of) a resting order, at its limit price unless
        `price` is given: the exchange moving on while the database looks away."""
        with self.lock:
            acct = account if isinstance(account, Account) else self.account(account)
            order = self.find_order(acct, order_id, client_order_id)
            if not order.is_open:
                raise SimError(-2013, f"order {order.order_id} is {order.status}, cannot fill it")
            amount = order.remaining if qty is None else D(str(qty))
            if amount <= 0 or amount > order.remaining:
                raise SimError(-4003, f"fill qty {amount} is not within the remaining {order.remaining}")
            self._check_qty(self.markets[order.symbol], amount)
            fill_price = D(str(price)) if price is not None else (
                order.price if order.price > 0 else self.markets[order.symbol].mark_price)
            return self._fill(acct, order, amount, fill_price, at_ms or now_ms(), maker=True)

    def cancel_order(self, account: str | Account, order_id=None, client_order_id: str | None = None,
                     status: str = "CANCELED", at_ms: int | None = None) -> Order:
        with self.lock:
            acct = account if isinstance(account, Account) else self.account(account)
            try:
                order = self.find_order(acct, order_id, client_order_id)
            except SimError as exc:
                if exc.code == -2013:
                    raise SimError(-2011, "Unknown order sent.") from None
                raise
            if not order.is_open:
                raise SimError(-2011, "Unknown order sent.")
            order.status = status
            order.update_time = at_ms or now_ms()
            return order

    def close_position(self, account: str | Account, symbol: str, client_order_id: str | None = None,
                       at_ms: int | None = None, position_side: str = "BOTH") -> Order | None:
        """Close the whole position (in hedge mode: the leg `position_side`) with a market
        order, e.g. from the web UI (`web_...`)."""
        with self.lock:
            acct = account if isinstance(account, Account) else self.account(account)
            position = acct.positions.get(leg_key(symbol, position_side))
            if position is None or position.amt == 0:
                return None
            side = "SELL" if position.amt > 0 else "BUY"
            return self.place_order(acct, symbol, side, "MARKET", abs(position.amt),
                                    client_order_id=client_order_id or "web_" + random_suffix(16),
                                    reduce_only=not acct.dual_side, at_ms=at_ms,
                                    position_side=position_side)

    def set_position_mode(self, account: str | Account, dual_side: bool) -> None:
        """POST /fapi/v1/positionSide/dual: hedge mode on or off, refused (as on Binance) while
        the account holds a position or an open order."""
        with self.lock:
            acct = account if isinstance(account, Account) else self.account(account)
            if any(p.amt != 0 for p in acct.positions.values()):
                raise SimError(-4068, "Position side cannot be changed if there exists position.")
            if any(o.is_open for o in acct.orders.values()):
                raise SimError(-4067, "Position side cannot be changed if there exists open orders.")
            acct.dual_side = bool(dual_side)

    def liquidate(self, account: str | Account, symbol: str, price=None,
                  at_ms: int | None = None) -> Order | None:
        """A forced liquidation: the symbol's open orders are cancelled, then an
        `autoclose-...` order closes the position at `price` (default: the mark price)."""
        with self.lock:
            acct = account if isinstance(account, Account) else self.account(account)
            t = at_ms or now_ms()
            for order in acct.orders.values():
                if order.symbol == symbol and order.is_open:
                    order.status, order.update_time = "CANCELED", t
            market = self.market(symbol)
            fill_price = D(str(price)) if price is not None else market.mark_price
            order = None
            for leg in ("BOTH", "LONG", "SHORT"):  # every leg of the symbol (hedge: two)
                position = acct.positions.get(leg_key(symbol, leg))
                if position is None or position.amt == 0:
                    continue
                side = "SELL" if position.amt > 0 else "BUY"
                order = Order(next(self._order_ids), symbol, f"autoclose-{t}-{leg.lower()}", side,
                              "LIMIT", abs(position.amt), fill_price, "IOC", leg == "BOTH", t, t,
                              position_side=leg)
                acct.orders[order.order_id] = order
                self._fill(acct, order, order.orig_qty, fill_price, t, maker=False)
            return order

    def _fill(self, acct: Account, order: Order, qty: Decimal, price: Decimal, t: int,
              maker: bool) -> Trade:
        signed = qty if order.side == "BUY" else -qty
        position = acct.positions.setdefault(leg_key(order.symbol, order.position_side), Position())
        old = position.amt
        new = old + signed
        realized = ZERO
        if old == 0 or (old > 0) == (signed > 0):
            position.entry_price = (abs(old) * position.entry_price + qty * price) / abs(new)
        else:
            closed = min(qty, abs(old))
            realized = (price - position.entry_price) * closed * (1 if old > 0 else -1)
            if qty > abs(old):
                position.entry_price = price
            elif new == 0:
                position.entry_price = ZERO
        position.amt = new
        position.update_time = t
        commission_usdt = qty * price * (MAKER_FEE if maker else TAKER_FEE)
        rate = self.asset_price(acct.fee_asset, t) or D(1)
        commission = (commission_usdt / rate).quantize(D("0.00000001"))
        trade = Trade(next(self._trade_ids[order.symbol]), order.order_id, order.symbol, order.side,
                      price, qty, commission, realized, maker, t, acct.fee_asset,
                      order.position_side)
        acct.trades.setdefault(order.symbol, []).append(trade)
        acct.realized_pnl += realized
        acct.commissions += commission * rate
        acct.update_time = t
        order.executed_qty += qty
        order.cum_quote += qty * price
        order.update_time = t
        order.status = "FILLED" if order.executed_qty == order.orig_qty else "PARTIALLY_FILLED"
        return trade

    def check_consistency(self) -> None:
        """Every position equals the signed sum of its fills; every order's executed qty equals
        the sum of its fills. Raises AssertionError naming the first difference."""
        with self.lock:
            for acct in self.accounts.values():
                for key, position in acct.positions.items():
                    symbol, leg = leg_of(key)
                    total = sum((t.qty if t.side == "BUY" else -t.qty
                                 for t in acct.trades.get(symbol, []) if t.position_side == leg), ZERO)
                    assert total == position.amt, f"{acct.name} {key}: position {position.amt} != fills {total}"
                for order in acct.orders.values():
                    filled = sum((t.qty for t in acct.trades.get(order.symbol, [])
                                  if t.order_id == order.order_id), ZERO)
                    assert filled == order.executed_qty, f"{acct.name} order {order.order_id}: executed {order.executed_qty} != fills {filled}"

    # ---- payloads (Binance's shapes) ---------------------------------------------------------
    def exchange_info(self) -> dict:
        with self.lock:
            symbols = []
            for m in self.markets.values():
                symbols.append({
                    "symbol": m.symbol, "pair": m.symbol, "contractType": "PERPETUAL",
                    "deliveryDate": FAR_DELIVERY, "onboardDate": 1569398400000, "status": "TRADING",
                    "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
                    "baseAsset": m.base, "quoteAsset": m.quote, "marginAsset": m.quote,
                    "pricePrecision": m.price_precision, "quantityPrecision": m.quantity_precision,
                    "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN",
                    "underlyingSubType": [], "settlePlan": 0, "triggerProtect": "0.0500",
                    "liquidationFee": "0.012500", "marketTakeBound": "0.05",
                    "maxMoveOrderLimit": 10000,
                    "filters": [
                        {"filterType": "PRICE_FILTER", "minPrice": fmt(m.tick_size),
                         "maxPrice": "4529764", "tickSize": fmt(m.tick_size)},
                        {"filterType": "LOT_SIZE", "minQty": fmt(m.min_qty), "maxQty": "1000000",
                         "stepSize": fmt(m.step_size)},
                        {"filterType": "MARKET_LOT_SIZE", "minQty": fmt(m.min_qty),
                         "maxQty": "120000", "stepSize": fmt(m.step_size)},
                        {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                        {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                        {"filterType": "MIN_NOTIONAL", "notional": "5"},
                        {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500",
                         "multiplierDown": "0.9500", "multiplierDecimal": "4"},
                    ],
                    "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT",
                                   "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
                    "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
                })
            return {
                "timezone": "UTC", "serverTime": now_ms(), "futuresType": "U_MARGINED",
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
                    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
                ],
                "exchangeFilters": [],
                "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
                "symbols": symbols,
            }

    def order_payload(self, order: Order, response: bool = False) -> dict:
        market = self.markets[order.symbol]
        payload = {
            "avgPrice": fmt(order.avg_price(), max(market.price_precision, 5)),
            "clientOrderId": order.client_order_id,
            "cumQuote": fmt(order.cum_quote),
            "executedQty": fmt(order.executed_qty),
            "orderId": order.order_id,
            "origQty": fmt(order.orig_qty),
            "origType": order.type,
            "price": fmt(order.price),
            "reduceOnly": order.reduce_only,
            "side": order.side,
            "positionSide": order.position_side,
            "status": order.status,
            "stopPrice": "0",
            "closePosition": False,
            "symbol": order.symbol,
            "time": order.time,
            "timeInForce": order.time_in_force,
            "type": order.type,
            "updateTime": order.update_time,
            "workingType": "CONTRACT_PRICE",
            "priceProtect": False,
            "priceMatch": "NONE",
            "selfTradePreventionMode": "EXPIRE_MAKER",
            "goodTillDate": 0,
        }
        if response:  # POST/DELETE /fapi/v1/order also carry cumQty and no `time`
            payload["cumQty"] = fmt(order.executed_qty)
            del payload["time"]
        return payload

    def open_orders(self, acct: Account, symbol: str | None = None) -> list[dict]:
        with self.lock:
            if symbol is not None:
                self.market(symbol)
            return [self.order_payload(o) for o in sorted(acct.orders.values(), key=lambda o: o.order_id)
                    if o.is_open and (symbol is None or o.symbol == symbol) and self.listed(o)]

    def position_risk(self, acct: Account, symbol: str | None = None) -> list[dict]:
        """GET /fapi/v3/positionRisk: symbols with a position or open orders."""
        with self.lock:
            if symbol is not None:
                self.market(symbol)
            with_orders = {o.symbol for o in acct.orders.values() if o.is_open}
            # Hedge mode lists both legs of each symbol it lists.
            legs = ("LONG", "SHORT") if acct.dual_side else ("BOTH",)
            held = {leg_of(k)[0] for k, p in acct.positions.items() if p.amt != 0}
            rows = []
            for sym, leg in ((s_, l_) for s_ in sorted(held | with_orders) for l_ in legs):
                if symbol is not None and sym != symbol:
                    continue
                position = acct.positions.get(leg_key(sym, leg), Position())
                market = self.markets[sym]
                notional = position.amt * market.mark_price
                unrealized = (market.mark_price - position.entry_price) * position.amt
                initial = abs(notional) / D(20)
                maint = abs(notional) * market.maint_margin_ratio
                rows.append({
                    "symbol": sym, "positionSide": leg, "positionAmt": fmt(position.amt),
                    "entryPrice": fmt(position.entry_price.quantize(D("0.00000001")).normalize())
                    if position.amt else "0.0",
                    "breakEvenPrice": fmt((position.entry_price * (1 + (TAKER_FEE if position.amt > 0 else -TAKER_FEE))).quantize(D("0.00000001")))
                    if position.amt else "0.0",
                    "markPrice": fmt(market.mark_price, 8),
                    "unRealizedProfit": fmt(unrealized, 8),
                    "liquidationPrice": "0",
                    "isolatedMargin": "0",
                    "notional": fmt(notional, 8),
                    "marginAsset": "USDT",
                    "isolatedWallet": "0",
                    "initialMargin": fmt(initial, 8),
                    "maintMargin": fmt(maint, 8),
                    "positionInitialMargin": fmt(initial, 8),
                    "openOrderInitialMargin": "0",
                    "adl": 1 if position.amt else 0,
                    "bidNotional": "0",
                    "askNotional": "0",
                    "updateTime": position.update_time,
                })
            return rows

    def leverage_brackets(self, symbol: str | None = None) -> list[dict]:
        with self.lock:
            if symbol is not None:
                self.market(symbol)
            caps = [(50000, 125, D("0.004"), 0), (250000, 100, D("0.005"), 50),
                    (3000000, 50, D("0.01"), 1300), (20000000, 20, D("0.025"), 46300)]
            out = []
            for m in self.markets.values():
                if symbol is not None and m.symbol != symbol:
                    continue
                floor, brackets = 0, []
                for i, (cap, lev, ratio, cum) in enumerate(caps, start=1):
                    brackets.append({"bracket": i, "initialLeverage": lev, "notionalCap": cap,
                                     "notionalFloor": floor, "maintMarginRatio": float(ratio),
                                     "cum": float(cum)})
                    floor = cap
                out.append({"symbol": m.symbol, "notionalCoef": 1.0, "brackets": brackets})
            return out

    def account_info(self, acct: Account) -> dict:
        with self.lock:
            positions = self.position_risk(acct)
            unrealized = sum((D(p["unRealizedProfit"]) for p in positions), ZERO)
            initial = sum((D(p["initialMargin"]) for p in positions), ZERO)
            maint = sum((D(p["maintMargin"]) for p in positions), ZERO)
            wallet = acct.wallet_balance
            margin = wallet + unrealized
            available = margin - initial
            money = lambda v: fmt(v, 8)  # noqa: E731
            return {
                "totalInitialMargin": money(initial), "totalMaintMargin": money(maint),
                "totalWalletBalance": money(wallet), "totalUnrealizedProfit": money(unrealized),
                "totalMarginBalance": money(margin), "totalPositionInitialMargin": money(initial),
                "totalOpenOrderInitialMargin": "0.00000000", "totalCrossWalletBalance": money(wallet),
                "totalCrossUnPnl": money(unrealized), "availableBalance": money(available),
                "maxWithdrawAmount": money(available),
                "assets": [{
                    "asset": "USDT", "walletBalance": money(wallet),
                    "unrealizedProfit": money(unrealized), "marginBalance": money(margin),
                    "maintMargin": money(maint), "initialMargin": money(initial),
                    "positionInitialMargin": money(initial), "openOrderInitialMargin": "0.00000000",
                    "crossWalletBalance": money(wallet), "crossUnPnl": money(unrealized),
                    "availableBalance": money(available), "maxWithdrawAmount": money(available),
                    "updateTime": acct.update_time,
                }],
                "positions": [{
                    "symbol": p["symbol"], "positionSide": p["positionSide"], "positionAmt": p["positionAmt"],
                    "unrealizedProfit": p["unRealizedProfit"], "isolatedMargin": "0",
                    "notional": p["notional"], "isolatedWallet": "0",
                    "initialMargin": p["initialMargin"], "maintMargin": p["maintMargin"],
                    "updateTime": p["updateTime"],
                } for p in positions],
            }

    def premium_index(self, symbol: str | None = None) -> dict | list[dict]:
        """GET /fapi/v1/premiumIndex: the mark price of one symbol (an object) or of all (a list)."""
        with self.lock:
            markets = [self.market(symbol)] if symbol else list(self.markets.values())
            now = now_ms()
            items = [{"symbol": m.symbol, "markPrice": fmt(m.mark_price),
                      "indexPrice": fmt(m.mark_price), "estimatedSettlePrice": fmt(m.mark_price),
                      "lastFundingRate": "0.00010000", "interestRate": "0.00010000",
                      "nextFundingTime": (now // 28_800_000 + 1) * 28_800_000, "time": now}
                     for m in markets]
            return items[0] if symbol else items

    def klines(self, symbol: str | None, interval: str | None, start_time=None, end_time=None,
               limit=None) -> list[list]:
        """GET /fapi/v1/klines: 1-minute candles of the mark price history (open = high = low =
        close = the price in force at the end of the minute; no volume is simulated)."""
        with self.lock:
            market = self.market(symbol)
            if interval != "1m":
                raise SimError(-1120, "Invalid interval.")
            limit = 500 if limit is None else int(limit)
            if not 1 <= limit <= 1500:
                raise SimError(-1130, "Invalid data sent for a parameter: limit.")
            now = now_ms()
            minute = 60_000
            end = min(int(end_time) if end_time is not None else now, now)
            if start_time is not None:  # like Binance: candles that open at or after it
                first = -(-int(start_time) // minute) * minute
            else:
                first = end // minute * minute - (limit - 1) * minute
            candles = []
            t = first
            while t <= end and len(candles) < limit:
                price = fmt(market.price_at(min(t + minute - 1, now)))
                candles.append([t, price, price, price, price, "0", t + minute - 1, "0", 0, "0",
                                "0", "0"])
                t += minute
            return candles

    def user_trades(self, acct: Account, symbol: str | None, order_id=None, start_time=None,
                    end_time=None, from_id=None, limit=None) -> list[dict]:
        """GET /fapi/v1/userTrades with Binance's parameter rules."""
        with self.lock:
            market = self.market(symbol)
            limit = 500 if limit is None else int(limit)
            if not 1 <= limit <= 1000:
                raise SimError(-1130, "Invalid data sent for a parameter: limit.")
            if from_id is not None and (start_time is not None or end_time is not None):
                raise SimError(-1128, "Combination of optional parameters invalid.")
            now = now_ms()
            no_range = start_time is None and end_time is None and from_id is None
            latest_first = no_range and order_id is None
            if no_range:  # no range given: the last 7 days only (the most recent `limit`; with
                # orderId too: an older order's fills need its time range)
                start_time, end_time = now - 7 * 86_400_000, now
            if start_time is not None or end_time is not None:
                start_time = int(start_time) if start_time is not None else int(end_time) - 7 * 86_400_000
                end_time = int(end_time) if end_time is not None else min(now, start_time + 7 * 86_400_000)
                if end_time - start_time > 7 * 86_400_000:
                    raise SimError(-1127, "More than 168 hours between startTime and endTime.")
            trades = acct.trades.get(market.symbol, [])
            selected = []
            for t in trades:  # ascending by id
                if from_id is not None and t.trade_id < int(from_id):
                    continue
                if order_id is not None and t.order_id != int(order_id):
                    continue
                if start_time is not None and not (start_time <= t.time <= end_time):
                    continue
                selected.append(t)
            selected = selected[-limit:] if latest_first else selected[:limit]
            return [self.trade_payload(t) for t in selected]

    def income(self, acct: Account, symbol: str | None = None, income_type: str | None = None,
               start_time=None, end_time=None, limit=None) -> list[dict]:
        """GET /fapi/v1/income with Binance's rules: every symbol unless one is named; without a
        range the last 7 days; oldest first from startTime, at most `limit` (default 100, at most
        1000); nothing older than 3 months. Entries come from the fills: a COMMISSION for each,
        and a REALIZED_PNL for each that realised profit or loss."""
        with self.lock:
            if symbol is not None:
                self.market(symbol)
            limit = 100 if limit is None else int(limit)
            if not 1 <= limit <= 1000:
                raise SimError(-1130, "Invalid data sent for a parameter: limit.")
            now = now_ms()
            if start_time is None and end_time is None:
                start_time, end_time = now - 7 * 86_400_000, now
            start_time = max(int(start_time) if start_time is not None else 0,
                             now - INCOME_RETENTION_MS)
            end_time = int(end_time) if end_time is not None else now
            entries = []
            for sym, trades in acct.trades.items():
                if symbol is not None and sym != symbol:
                    continue
                for t in trades:
                    if not start_time <= t.time <= end_time:
                        continue
                    base = {"symbol": t.symbol, "time": t.time, "tradeId": str(t.trade_id),
                            "info": "", "asset": t.commission_asset}
                    if t.commission:
                        entries.append({**base, "incomeType": "COMMISSION",
                                        "income": fmt(-t.commission, 8),
                                        "tranId": t.trade_id * 10 + 1})
                    if t.realized_pnl:
                        entries.append({**base, "incomeType": "REALIZED_PNL", "asset": "USDT",
                                        "income": fmt(t.realized_pnl, 8),
                                        "tranId": t.trade_id * 10 + 2})
            if income_type is not None:
                entries = [e for e in entries if e["incomeType"] == income_type]
            entries.sort(key=lambda e: (e["time"], e["tranId"]))
            return entries[:limit]

    def trade_payload(self, t: Trade) -> dict:
        return {
            "buyer": t.side == "BUY", "commission": fmt(t.commission), "commissionAsset": t.commission_asset,
            "id": t.trade_id, "maker": t.maker, "orderId": t.order_id, "price": fmt(t.price),
            "qty": fmt(t.qty), "quoteQty": fmt(t.qty * t.price), "realizedPnl": fmt(t.realized_pnl, 8),
            "side": t.side, "positionSide": t.position_side, "symbol": t.symbol, "time": t.time,
        }

    def dump(self) -> dict:
        """The whole state as JSON-able data, for `GET /_control/state` and debugging."""
        with self.lock:
            return {
                "markets": {s: {"mark_price": fmt(m.mark_price), "step_size": fmt(m.step_size)}
                            for s, m in self.markets.items()},
                "accounts": {
                    name: {
                        "open_orders": self.open_orders(acct),
                        "orders": [self.order_payload(o) for o in acct.orders.values()],
                        "positions": self.position_risk(acct),
                        "trades": [self.trade_payload(t) for ts in acct.trades.values() for t in ts],
                    } for name, acct in self.accounts.items()},
                "faults": [{"kind": f.kind, "path": f.path, "method": f.method, "count": f.count,
                            "params": {k: v for k, v in f.params.items() if k != "frozen"}}
                           for f in self.faults],
                "request_counts": dict(self.request_counts),
            }
