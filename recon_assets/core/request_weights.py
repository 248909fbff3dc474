"""What each exchange request costs against the per-IP weight budget (Binance USD-M's documented
request weights), and the cheapest way to read an account's open orders. Plain Python: the
exchange client charges it, the simulator enforces it, the benchmark adds it up.

Binance limits request weight per IP, 2,400 per rolling clock minute on USD-M, not per API key;
a 429 says the budget is spent (with Retry-After), and an IP that keeps sending after a 429 is
banned (418) for 2 minutes up to 3 days, longer for repeat offenders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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


# ---- spreading the cycles over the minute ----------------------------------------------------

# The share of each egress's budget the cycles leave free: for the corrections' probes, the
# trading app's own requests on the same IP, and a cycle heavier than its last one.
CYCLE_PLAN_HEADROOM = 0.30
# What a cycle is expected to weigh before one was ever measured (a cold cycle of an account
# with a few symbols weighs about 70; see benchmarks/exchange_requests.py).
UNMEASURED_CYCLE_WEIGHT = 120


@dataclass(frozen=True)
class AccountLoad:
    """What the planner knows of one account: its egress and that egress's budget per minute
    as its last snapshot saw it (None: no snapshot yet, so its egress's budget is what the
    others' snapshots say), the weight its last measured cycle spent (None: never measured),
    and when that cycle ran."""
    account: str
    egress: str
    limit_per_minute: int | None
    last_weight: int | None = None
    last_cycle_ms: int | None = None


def spread_cycles(loads: list[AccountLoad], headroom: float = CYCLE_PLAN_HEADROOM
                  ) -> tuple[list[str], dict[str, list[str]]]:
    """Which accounts' cycles start this minute: per egress, the accounts waiting longest
    first (never measured first of all), while their expected weights (the last cycle's, or
    the heaviest of the egress when unmeasured) fit the budget less `headroom`; at least one per
    egress, so an account heavier than the budget still gets its cycle. The others wait for the
    next minute, when they are the longest waiting. Returns (accounts to run, sorted; per egress
    the accounts deferred)."""
    by_egress: dict[str, list[AccountLoad]] = {}
    for load in loads:
        by_egress.setdefault(load.egress, []).append(load)
    run: list[str] = []
    deferred: dict[str, list[str]] = {}
    for egress, group in sorted(by_egress.items()):
        known = [g.last_weight for g in group if g.last_weight is not None]
        unmeasured = max(known, default=UNMEASURED_CYCLE_WEIGHT)
        # An account not cycled yet does not know its egress's budget: the measured ones do.
        limits = [g.limit_per_minute for g in group if g.limit_per_minute is not None]
        room = min(limits, default=WEIGHT_LIMIT_PER_MINUTE) * (1 - headroom)
        spent = 0.0
        order = sorted(group, key=lambda g: (g.last_cycle_ms is not None, g.last_cycle_ms or 0,
                                             g.account))
        for i, load in enumerate(order):
            weight = load.last_weight if load.last_weight is not None else unmeasured
            if i == 0 or spent + weight <= room:
                run.append(load.account)
                spent += weight
            else:
                deferred.setdefault(egress, []).append(load.account)
    return sorted(run), deferred
