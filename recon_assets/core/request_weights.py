"""What each exchange request costs against the per-IP weight budget (Binance USD-M's documented
request weights), and the cheapest way to read an account's open orders. Plain Python: the
exchange client charges it, the simulator enforces it, the benchmark adds it up.

Binance limits request weight per IP, 2,400 per rolling clock minute on USD-M, not per API key;
a 429 says the budget is spent (with Retry-After), and an IP that keeps sending after a 429 is
banned (418) for 2 minutes up to 3 days, longer for repeat offenders.
"""

from __future__ import annotations

from collections.abc import Mapping

WEIGHT_LIMIT_PER_MINUTE = 2400

# (method, path) -> weight; openOrders, openAlgoOrders and premiumIndex cost more without a
# symbol (NO_SYMBOL_WEIGHTS).
REQUEST_WEIGHTS: dict[tuple[str, str], int] = {
    ("GET", "/fapi/v1/ping"): 1, ("GET", "/fapi/v1/time"): 1,
    ("GET", "/fapi/v1/exchangeInfo"): 1, ("GET", "/fapi/v1/premiumIndex"): 1,
    ("GET", "/fapi/v1/openOrders"): 1, ("GET", "/fapi/v1/openAlgoOrders"): 1,
    ("GET", "/fapi/v3/positionRisk"): 5, ("GET", "/fapi/v1/userTrades"): 5,
    ("GET", "/fapi/v3/account"): 5, ("GET", "/fapi/v1/order"): 1,
    ("GET", "/fapi/v1/algoOrder"): 1, ("GET", "/fapi/v1/leverageBracket"): 1,
    ("GET", "/fapi/v1/income"): 30, ("POST", "/fapi/v1/order"): 1,
    ("DELETE", "/fapi/v1/order"): 1, ("POST", "/fapi/v1/algoOrder"): 1,
    ("DELETE", "/fapi/v1/algoOrder"): 1,
}
NO_SYMBOL_WEIGHTS: dict[tuple[str, str], int] = {
    ("GET", "/fapi/v1/openOrders"): 40, ("GET", "/fapi/v1/openAlgoOrders"): 40,
    ("GET", "/fapi/v1/premiumIndex"): 10,
}
# klines: by the number of candles asked for.
_KLINES_WEIGHTS = ((100, 1), (500, 2), (1000, 5))


def request_weight(method: str, path: str, params: Mapping[str, str] | None = None) -> int:
    """The documented weight of one request (1 for an endpoint not listed)."""
    params = params or {}
    key = (method.upper(), path)
    if path.endswith("/klines"):
        limit = int(params.get("limit") or 500)
        return next((w for bound, w in _KLINES_WEIGHTS if limit < bound), 10)
    if key in NO_SYMBOL_WEIGHTS and not params.get("symbol"):
        return NO_SYMBOL_WEIGHTS[key]
    return REQUEST_WEIGHTS.get(key, 1)


def per_symbol_is_cheaper(symbols: int, path: str = "/fapi/v1/openOrders") -> bool:
    """Whether reading open orders one symbol at a time costs less than one request for all:
    per symbol weighs 1 each, without a symbol 40."""
    return symbols * REQUEST_WEIGHTS[("GET", path)] < NO_SYMBOL_WEIGHTS[("GET", path)]
