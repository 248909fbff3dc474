"""What is Binance USD-M about the exchange side: the payload checks of each endpoint's answer
(every response is checked before ccxt parses it), the raw statuses, the income history's
entries, and the ccxt parameters that reach Binance-only endpoints. The request weights are in
`core/request_weights.py`, the raw status mapping to the database's words in
`core/exchange_snapshot.py`, the order/fill retention windows in `core/rules.py`.

A second ccxt exchange needs its own module like this one, chosen by `exchange_id` where
`resources/exchange.py` imports this one (docs/configuration.md, "Another exchange").
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from recon_assets.core.exchange_snapshot import MarketBounds, beyond_bounds
from recon_assets.resources.exchange_errors import ExchangePayloadError, ExchangeUnknownMarket

# The income history's entries that a fill leaves (a commission on every fill, a realised PnL on
# a closing one), and its largest page.
INCOME_OF_TRADES = frozenset({"COMMISSION", "REALIZED_PNL"})
INCOME_PAGE_LIMIT = 1000
# ccxt reaches the Algo Service's conditional orders (stop, take-profit, trailing) only with it;
# one is looked up by its client id under this name, and names the order it became once
# triggered in this field.
CONDITIONAL_ORDERS = {"trigger": True}
CONDITIONAL_CLIENT_ID = "clientAlgoId"
TRIGGERED_AS_ORDER = "actualOrderId"
# The endpoint whose answer lists every symbol with a position or open orders.
POSITION_LISTING = "/positionRisk"
# positionSide: BOTH in one-way mode; in hedge mode (dual-side) each leg.
POSITION_SIDES = {"BOTH", "LONG", "SHORT"}
HEDGE_LEGS = {"LONG", "SHORT"}


# ---- payload checks (plain functions) --------------------------------------------------------
ORDER_STATUSES = {"NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH",
                  "REJECTED", "NEW_INSURANCE", "NEW_ADL"}
_SIDES = {"BUY", "SELL"}


class _Bad(Exception):
    pass


class _UnknownMarket(_Bad):
    """A symbol the loaded markets do not list (a listing newer than them, or a bad symbol)."""


def _error_for(exc: _Bad) -> type[ExchangePayloadError]:
    return ExchangeUnknownMarket if isinstance(exc, _UnknownMarket) else ExchangePayloadError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# No quantity, price, fee or amount of a USD-M account reaches this; a float holds it exactly
# enough and far from infinity.
MAX_DECIMAL_MAGNITUDE = Decimal("1E+15")
# Binance's longest text fields are ids of at most 36 characters; symbols and names are shorter.
MAX_TEXT_LENGTH = 128


def _decimal(item: dict, name: str, minimum: Decimal | None = None, positive: bool = False) -> Decimal:
    if name not in item:
        raise _Bad(f"field {name!r} is missing")
    raw = item[name]
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool) or (
            isinstance(raw, str) and not raw.isascii()):  # Decimal reads other scripts' digits
        raise _Bad(f"field {name!r} = {raw!r} is not a decimal")
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        raise _Bad(f"field {name!r} = {raw!r} is not a decimal") from None
    if not value.is_finite():
        raise _Bad(f"field {name!r} = {raw!r} is not a finite decimal")
    if abs(value) > MAX_DECIMAL_MAGNITUDE:  # finite here, infinite as a float (1E+400)
        raise _Bad(f"field {name!r} = {raw!r} is beyond any plausible amount "
                   f"(|x| <= {MAX_DECIMAL_MAGNITUDE:E})")
    if positive and value <= 0:
        raise _Bad(f"field {name!r} = {raw!r} must be > 0")
    if minimum is not None and value < minimum:
        raise _Bad(f"field {name!r} = {raw!r} must be >= {minimum}")
    return value


def _integer(item: dict, name: str, minimum: int = 0) -> int:
    if name not in item:
        raise _Bad(f"field {name!r} is missing")
    raw = item[name]
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():  # ms times sent as strings
        raw = int(raw)
    if not _is_int(raw) or raw < minimum:
        raise _Bad(f"field {name!r} = {raw!r} is not a whole number >= {minimum}")
    return raw


def _choice(item: dict, name: str, allowed: set[str], why: str = "",
            optional: str | None = None) -> str:
    """The field's value, one of `allowed` (text); a missing field is malformed, or, when
    `optional` is given, that value."""
    if name not in item:
        if optional is not None:
            return optional
        raise _Bad(f"field {name!r} is missing")
    raw = item[name]
    if not isinstance(raw, str) or raw not in allowed:  # (an object or list is no choice either)
        raise _Bad(f"field {name!r} = {raw!r} is not one of {sorted(allowed)}{why}")
    return raw


def _text(item: dict, name: str, optional: bool = False) -> str | None:
    if name not in item:
        if optional:
            return None
        raise _Bad(f"field {name!r} is missing")
    raw = item[name]
    if not isinstance(raw, str) or (not raw and not optional):
        raise _Bad(f"field {name!r} = {raw!r} is not a non-empty string")
    if len(raw) > MAX_TEXT_LENGTH:
        raise _Bad(f"field {name!r} is {len(raw)} characters long, beyond {MAX_TEXT_LENGTH}")
    if not raw.isprintable():  # NUL and other control characters: no table or log takes them
        raise _Bad(f"field {name!r} = {raw!r} holds a control character")
    return raw


def _symbol(item: dict, known: set[str] | None) -> str:
    symbol = _text(item, "symbol")
    if known is not None and symbol not in known:
        raise _UnknownMarket(f"field 'symbol' = {symbol!r} is not a market listed by exchangeInfo")
    return symbol


def _bounded(item: dict, name: str, value: Decimal, what: str,
             bounds: dict[str, MarketBounds] | None) -> None:
    """A quantity or price no market allows (core.exchange_snapshot.beyond_bounds)."""
    why = beyond_bounds(what, value, (bounds or {}).get(item.get("symbol")))
    if why:
        raise _Bad(f"field {name!r} = {item[name]!r} {why}")




def _check_order(item: dict, known: set[str] | None, with_time: bool = True,
                 bounds: dict[str, MarketBounds] | None = None) -> None:
    _integer(item, "orderId", 1)
    _symbol(item, known)
    _text(item, "clientOrderId")
    _choice(item, "side", _SIDES)
    _text(item, "type")
    _choice(item, "status", ORDER_STATUSES)
    qty = _decimal(item, "origQty", positive=True)
    _bounded(item, "origQty", qty, "qty", bounds)
    executed = _decimal(item, "executedQty", minimum=Decimal(0))
    if executed > qty:
        raise _Bad(f"field 'executedQty' = {item['executedQty']!r} exceeds origQty {item['origQty']!r}")
    for name in ("price", "avgPrice"):
        _bounded(item, name, _decimal(item, name, minimum=Decimal(0)), "price", bounds)
    _choice(item, "positionSide", POSITION_SIDES)
    if with_time:
        _integer(item, "time", 1)
    _integer(item, "updateTime", 0)


ALGO_STATUSES = {"NEW", "CANCELED", "TRIGGERING", "TRIGGERED", "FINISHED", "REJECTED", "EXPIRED"}


def _check_algo_order(item: dict, known: set[str] | None,
                      bounds: dict[str, MarketBounds] | None = None) -> None:
    _integer(item, "algoId", 1)
    _symbol(item, known)
    _text(item, "clientAlgoId")
    _choice(item, "side", _SIDES)
    _text(item, "orderType")
    _choice(item, "algoStatus", ALGO_STATUSES)
    _bounded(item, "quantity", _decimal(item, "quantity", positive=True), "qty", bounds)
    for name in ("triggerPrice", "price"):
        _bounded(item, name, _decimal(item, name, minimum=Decimal(0)), "price", bounds)
    _choice(item, "positionSide", POSITION_SIDES)
    _integer(item, "createTime", 1)


def _check_position(item: dict, known: set[str] | None,
                    bounds: dict[str, MarketBounds] | None = None) -> None:
    _symbol(item, known)
    leg = _choice(item, "positionSide", POSITION_SIDES)
    amount = _decimal(item, "positionAmt")
    if (leg == "LONG" and amount < 0) or (leg == "SHORT" and amount > 0):
        raise _Bad(f"field 'positionAmt' = {item['positionAmt']!r} has the wrong sign for the "
                   f"{leg} leg")
    entry = _decimal(item, "entryPrice", minimum=Decimal(0))
    if amount != 0 and entry <= 0:
        raise _Bad(f"field 'entryPrice' = {item['entryPrice']!r} must be > 0 for positionAmt {item['positionAmt']!r}")
    _bounded(item, "entryPrice", entry, "price", bounds)
    mark = _decimal(item, "markPrice", minimum=Decimal(0))
    _bounded(item, "markPrice", mark, "price", bounds)
    _bounded(item, "positionAmt", amount * max(mark, entry), "notional", bounds)
    _bounded(item, "notional", _decimal(item, "notional"), "notional", bounds)
    _integer(item, "updateTime", 0)


def _check_trade(item: dict, known: set[str] | None,
                 bounds: dict[str, MarketBounds] | None = None) -> None:
    _integer(item, "id", 1)
    _integer(item, "orderId", 1)
    _symbol(item, known)
    _choice(item, "side", _SIDES)
    _bounded(item, "price", _decimal(item, "price", positive=True), "price", bounds)
    _bounded(item, "qty", _decimal(item, "qty", positive=True), "qty", bounds)
    _decimal(item, "commission")
    _text(item, "commissionAsset")
    _integer(item, "time", 1)
    # The fill's leg (a SELL on SHORT opened a short, it closed no long); a fill without one is
    # one-way (BOTH). core.exchange_snapshot.fill_leg turns it into the frame's position_side.
    _choice(item, "positionSide", POSITION_SIDES, optional="BOTH")


def _check_income(item: dict, _known) -> None:
    # Not checked against the markets: a transfer has no symbol, and a delisted symbol's income
    # stays in the history; the snapshot reports those instead of failing.
    if not isinstance(item.get("symbol", ""), str):
        raise _Bad(f"field 'symbol' = {item.get('symbol')!r} is not text")
    _text(item, "incomeType")
    _integer(item, "time", 1)


def _check_market(item: dict, _known) -> None:
    _text(item, "symbol")
    _text(item, "baseAsset")
    _text(item, "quoteAsset")
    _text(item, "status")
    filters = item.get("filters")
    if not isinstance(filters, list):
        raise _Bad("field 'filters' is missing or not a list")
    lot = next((f for f in filters if isinstance(f, dict) and f.get("filterType") == "LOT_SIZE"), None)
    if lot is None:
        raise _Bad("field 'filters' has no LOT_SIZE filter")
    try:
        _decimal(lot, "stepSize", positive=True)
    except _Bad as exc:
        raise _Bad(f"LOT_SIZE {exc}") from None


def _label(item: Any) -> str:
    if isinstance(item, dict):
        for key in ("orderId", "id", "symbol"):
            if key in item:
                return f"{key} {item[key]}"
    return "?"


# What identifies one item of a list answer: two items with the same key in one answer are a
# malformed answer (the exchange lists each order, fill and position leg once), never summed or
# silently collapsed.
_ITEM_KEYS = {"_check_order": ("orderId",), "_check_algo_order": ("algoId",),
              "_check_trade": ("id",), "_check_position": ("symbol", "positionSide")}


def _check_list(endpoint: str, payload: Any, check, known, **kwargs) -> None:
    if not isinstance(payload, list):
        raise ExchangePayloadError(f"malformed exchange payload from {endpoint}: expected a JSON list, "
                                   f"got {type(payload).__name__}")
    for i, item in enumerate(payload):
        if not isinstance(item, dict):
            raise ExchangePayloadError(f"malformed exchange payload from {endpoint}: item {i} is "
                                       f"{type(item).__name__}, not an object")
        try:
            check(item, known, **kwargs)
        except _Bad as exc:
            raise _error_for(exc)(
                f"malformed exchange payload from {endpoint}: item {i} ({_label(item)}): {exc}") from None
    key_fields = _ITEM_KEYS.get(check.__name__)
    if key_fields:
        seen: dict[tuple, int] = {}
        for i, item in enumerate(payload):
            key = tuple(item[k] for k in key_fields)
            if key in seen:
                named = ", ".join(f"{k!r} = {v!r}" for k, v in zip(key_fields, key))
                raise ExchangePayloadError(
                    f"malformed exchange payload from {endpoint}: items {seen[key]} and {i} are "
                    f"duplicates ({named}): the exchange lists each once")
            seen[key] = i


def check_payload(method: str, path: str, payload: Any, known_symbols: set[str] | None = None,
                  bounds: dict[str, MarketBounds] | None = None) -> None:
    """Raise ExchangePayloadError naming the field when a Binance USD-M payload cannot be
    trusted; `known_symbols` (exchange ids) are the markets every item must belong to, `bounds`
    (by exchange id) the largest quantity and price each allows."""
    endpoint = f"{method} {path}"
    if isinstance(payload, dict) and "code" in payload and "msg" in payload and len(payload) <= 3:
        return  # an error body: ccxt's own error handling raises for it
    if path.endswith("/exchangeInfo"):
        if not isinstance(payload, dict) or not isinstance(payload.get("symbols"), list):
            raise ExchangePayloadError(f"malformed exchange payload from {endpoint}: field 'symbols' "
                                       "is missing or not a list")
        if not payload["symbols"]:
            raise ExchangePayloadError(f"malformed exchange payload from {endpoint}: field 'symbols' is empty")
        _check_list(endpoint, payload["symbols"], _check_market, None)
    elif path.endswith("/openOrders"):
        _check_list(endpoint, payload, _check_order, known_symbols, bounds=bounds)
    elif path.endswith("/openAlgoOrders"):
        _check_list(endpoint, payload, _check_algo_order, known_symbols, bounds=bounds)
    elif path.endswith("/algoOrder") and method == "GET":
        if not isinstance(payload, dict):
            raise ExchangePayloadError(f"malformed exchange payload from {endpoint}: expected a JSON object")
        try:
            _check_algo_order(payload, known_symbols, bounds)
        except _Bad as exc:
            raise _error_for(exc)(f"malformed exchange payload from {endpoint}: {exc}") from None
    elif path.endswith("/positionRisk"):
        _check_list(endpoint, payload, _check_position, known_symbols, bounds=bounds)
    elif path.endswith("/userTrades"):
        _check_list(endpoint, payload, _check_trade, known_symbols, bounds=bounds)
    elif path.endswith("/income"):
        _check_list(endpoint, payload, _check_income, None)
    elif path.endswith("/order"):
        if not isinstance(payload, dict):
            raise ExchangePayloadError(f"malformed exchange payload from {endpoint}: expected a JSON object")
        try:
            _check_order(payload, known_symbols, with_time=(method == "GET"), bounds=bounds)
        except _Bad as exc:
            raise _error_for(exc)(f"malformed exchange payload from {endpoint}: {exc}") from None
    elif path.endswith("/premiumIndex"):
        items = payload if isinstance(payload, list) else [payload]
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ExchangePayloadError(f"malformed exchange payload from {endpoint}: item {i} "
                                           "is not an object")
            try:
                _symbol(item, known_symbols)
                _decimal(item, "markPrice", positive=True)
            except _Bad as exc:
                raise _error_for(exc)(
                    f"malformed exchange payload from {endpoint}: item {i} ({_label(item)}): {exc}") from None
    elif path.endswith("/klines"):
        if not isinstance(payload, list):
            raise ExchangePayloadError(f"malformed exchange payload from {endpoint}: expected a JSON list")
        for i, candle in enumerate(payload):
            if not (isinstance(candle, list) and len(candle) >= 5 and _is_int(candle[0])):
                raise ExchangePayloadError(
                    f"malformed exchange payload from {endpoint}: candle {i} is not [openTime, "
                    "open, high, low, close, ...]")
            try:
                _decimal({"close": candle[4]}, "close", positive=True)
            except _Bad as exc:
                raise _error_for(exc)(
                    f"malformed exchange payload from {endpoint}: candle {i}: {exc}") from None
    elif path.endswith("/account"):
        if not isinstance(payload, dict) or not isinstance(payload.get("assets"), list):
            raise ExchangePayloadError(f"malformed exchange payload from {endpoint}: field 'assets' "
                                       "is missing or not a list")
