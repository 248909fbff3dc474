"""The exchange snapshot's decisions, as plain functions (no I/O, no Dagster): which symbols
matter, which of them need their fills read, whether a snapshot is fresh and complete, and how
ccxt's structures become the frames of `recon_assets.core.frames`. The reading itself (ccxt calls,
the fill store) is `recon_assets.resources.exchange_snapshot.read_exchange_snapshot`.

Frames: symbols are ccxt unified symbols, quantities unsigned with a side (`buy`/`sell` for
orders and fills; `long`/`short`/`flat` for positions), prices and money floats in USD, times
timezone-aware UTC. Order statuses use the trading database's words (`open`,
`partially_filled`, `filled`, `canceled`, `expired`, `rejected`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from recon_assets.core.frames import (EXCHANGE_FILLS, EXCHANGE_OPEN_ORDERS, EXCHANGE_POSITIONS,
                                      empty_frame, with_fill_legs)
from recon_assets.core.fees import fee_of
from recon_assets.core.rules import (FLAT, ONE_WAY, OPEN_ORDER_STATUSES, OPEN_SLICE_STATUS,
                                     POSITION_SIDES)

# Binance's raw order status -> the trading database's word for it (core.rules.ORDER_STATUSES).
BINANCE_TO_DB_STATUS = {
    "NEW": "open", "PARTIALLY_FILLED": "partially_filled", "FILLED": "filled",
    "CANCELED": "canceled", "EXPIRED": "expired", "EXPIRED_IN_MATCH": "expired",
    "REJECTED": "rejected", "NEW_INSURANCE": "open", "NEW_ADL": "open",
}


def _positive(value) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def db_symbols(snapshot: dict) -> set[str]:
    """Symbols the database cares about: open slices, open orders, non-zero positions."""
    symbols = set()
    for s in snapshot.get("trade_slices") or []:
        if s.get("status", OPEN_SLICE_STATUS) == OPEN_SLICE_STATUS:
            symbols.add(s["symbol"])
    for o in snapshot.get("orders") or []:
        if o.get("status") in OPEN_ORDER_STATUSES:
            symbols.add(o["symbol"])
    for p in snapshot.get("positions") or []:
        if _positive(p.get("qty")):
            symbols.add(p["symbol"])
    return symbols


def exchange_symbols(open_orders: Iterable[dict], positions: Iterable[dict]) -> set[str]:
    """Symbols where the exchange shows activity: open orders or a non-zero position."""
    return {o["symbol"] for o in open_orders} | {
        p["symbol"] for p in positions if _positive(p.get("contracts"))}


def activity_key(symbol: str, open_orders: Iterable[dict], positions: Iterable[dict]) -> str | None:
    """A fingerprint of what the exchange shows for `symbol` (each position's amount and update
    time, both legs in hedge mode; each open order's id, executed qty and update time). Every
    fill moves its position's update time, so while the fingerprint is unchanged no new fill can
    exist. None when the exchange lists no position for the symbol: then nothing can be
    concluded."""
    held = [p for p in positions if p["symbol"] == symbol and _positive(p.get("contracts"))]
    if not held:
        return None
    parts = sorted(f"position:{(p.get('info') or {}).get('positionSide')}:"
                   f"{(p.get('info') or {}).get('positionAmt')}:{(p.get('info') or {}).get('updateTime')}"
                   for p in held)
    parts += sorted(f"order:{o['id']}:{(o.get('info') or {}).get('executedQty')}:"
                    f"{(o.get('info') or {}).get('updateTime')}"
                    for o in open_orders if o["symbol"] == symbol)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Cursor:
    last_fill_id: int | None
    activity_key: str | None
    read_at_ms: int


def plan_fill_reads(symbols: Iterable[str], keys: dict[str, str | None], cursors: dict[str, Cursor],
                    now_ms: int, max_skip_ms: int) -> list[str]:
    """The symbols whose fills must be read this cycle: never read, no position to fingerprint,
    a changed fingerprint, or not read for `max_skip_ms` (a safety net)."""
    out = []
    for symbol in sorted(set(symbols)):
        cursor = cursors.get(symbol)
        key = keys.get(symbol)
        if (cursor is None or cursor.last_fill_id is None and cursor.activity_key is None
                or key is None or key != cursor.activity_key
                or now_ms - cursor.read_at_ms > max_skip_ms):
            out.append(symbol)
    return out


# How far back each income sweep reaches before the last entry it read: an entry can be posted
# a moment after its fill's time, and a symbol seen twice costs one cursor read, not a miss.
INCOME_SWEEP_OVERLAP_MS = 60_000


def income_sweep_start(cursor_ms: int | None, now_ms: int, window_ms: int) -> int:
    """Where this cycle's income sweep starts reading (exchange time): from the cursor, less
    the overlap; the first sweep covers the fills window."""
    if cursor_ms is None:
        return now_ms - window_ms
    return max(0, min(cursor_ms, now_ms) - INCOME_SWEEP_OVERLAP_MS)


def income_sweep_due(swept_at_ms: int | None, now_ms: int, interval_ms: int) -> bool:
    """Whether the account's income history is read this cycle: never read, or not for
    `interval_ms`; an interval of 0 turns the sweep off."""
    if interval_ms <= 0:
        return False
    return swept_at_ms is None or now_ms - swept_at_ms >= interval_ms


def next_income_cursor(start_ms: int, last_entry_ms: int | None, now_ms: int, complete: bool) -> int:
    """The cursor after a sweep: the last entry read, or, when the history was read to its end,
    now (so a quiet account does not re-read an ever longer range)."""
    if complete:
        return max(now_ms, start_ms)
    return max(last_entry_ms or start_ms, start_ms)


# The largest position notional the snapshot believes (USD): Binance's leverage brackets cap a
# position far below it on every market, so a larger one is a malformed answer, not exposure to
# act on (it would trip the watchdog, pause profiles, or be booked).
MAX_POSITION_NOTIONAL_USD = 1e12


@dataclass(frozen=True)
class MarketBounds:
    """The largest quantity of one order or fill and the largest price a market allows (from
    its exchangeInfo filters, via ccxt's `limits`); None where the market says nothing."""
    max_qty: float | None
    max_price: float | None


def market_bounds(market: dict) -> MarketBounds:
    """A ccxt market's bounds: the larger of its limit-order and market-order lot maxima, and
    its price filter's maximum."""
    limits = market.get("limits") or {}

    def top(*names):
        values = [(limits.get(n) or {}).get("max") for n in names]
        values = [float(v) for v in values if v is not None and math.isfinite(float(v)) and float(v) > 0]
        return max(values) if values else None
    return MarketBounds(top("amount", "market"), top("price"))


def beyond_bounds(what: str, value, bounds: MarketBounds | None) -> str | None:
    """Why `value` (a quantity: `qty`, a price: `price`, a position's notional: `notional`)
    cannot be true of the market, or None. Only absolute sizes are compared."""
    size = abs(float(value))
    if what == "notional":
        limit = MAX_POSITION_NOTIONAL_USD
    elif bounds is None:
        return None
    else:
        limit = bounds.max_qty if what == "qty" else bounds.max_price
    if limit is None or size <= limit:
        return None
    return f"exceeds the largest {what} the market allows ({limit:g})"


def utc_from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _ts(ms) -> pd.Timestamp:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC")


def _num(value) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def open_orders_frame(account: str, orders: list[dict], mark_prices: dict[str, float],
                      fetched_at: pd.Timestamp) -> pd.DataFrame:
    """EXCHANGE_OPEN_ORDERS from ccxt orders (their `info` keeps Binance's exact status)."""
    rows = []
    for o in orders:
        info = o.get("info") or {}
        qty, price = _num(o.get("amount")), _num(o.get("price"))
        if not price > 0:  # a stop/take-profit market order: its price is the trigger
            price = _num(o.get("triggerPrice")) if o.get("triggerPrice") else math.nan
        if not price > 0:
            price = math.nan
        reference = price if price > 0 else mark_prices.get(o["symbol"], math.nan)
        rows.append({
            "account": account, "symbol": o["symbol"], "exchange_order_id": str(o["id"]),
            "client_order_id": o.get("clientOrderId"), "side": o.get("side"),
            "order_type": o.get("type"), "status": BINANCE_TO_DB_STATUS.get(info.get("status") or info.get("algoStatus"), "open"),
            "qty": qty, "filled_qty": _num(o.get("filled")) if o.get("filled") is not None else 0.0,
            "price": price, "notional_usd": abs(qty * reference),
            "created_at": _ts(o["timestamp"]), "fetched_at": fetched_at})
    if not rows:
        return typed(empty_frame(EXCHANGE_OPEN_ORDERS), EXCHANGE_OPEN_ORDERS)
    return typed(pd.DataFrame(rows, columns=list(EXCHANGE_OPEN_ORDERS)), EXCHANGE_OPEN_ORDERS)


def flat_symbols(symbols: Iterable[str], positions: Iterable[dict]) -> list[str]:
    """The symbols that matter where the exchange holds no position (their mark price is read
    on its own: a synthetic exit of a ghost slice is priced at it)."""
    held = {p["symbol"] for p in positions if _positive(p.get("contracts"))}
    return sorted(set(symbols) - held)


def positions_frame(account: str, symbols: Iterable[str], positions: list[dict],
                    steps: dict[str, float], fetched_at: pd.Timestamp,
                    flat_marks: dict[str, float] | None = None, hedged: bool = False) -> pd.DataFrame:
    """EXCHANGE_POSITIONS: one row per symbol that matters (in hedge mode, `hedged`: one per
    leg, long and short), qty 0 and side `flat` when the exchange holds nothing there (with the
    mark price from `flat_marks` when no leg of the symbol gives one), with the market's
    quantity step."""
    legs = POSITION_SIDES if hedged else (ONE_WAY,)
    held = {(p["symbol"], p.get("side") if hedged else ONE_WAY): p
            for p in positions if _positive(p.get("contracts"))}
    marks = {symbol: _num(p.get("markPrice")) for (symbol, _), p in held.items()}
    rows = []
    for symbol, leg in ((s, g) for s in sorted(set(symbols) | {s for s, _ in held}) for g in legs):
        p = held.get((symbol, leg))
        if p is None:
            mark = marks.get(symbol, (flat_marks or {}).get(symbol, math.nan))
            rows.append({"account": account, "symbol": symbol, "side": FLAT, "qty": 0.0,
                         "entry_price": math.nan, "mark_price": mark, "notional_usd": 0.0,
                         "min_qty_step": steps.get(symbol, math.nan), "fetched_at": fetched_at,
                         "position_side": leg})
            continue
        qty = _num(p.get("contracts")) * (_num(p.get("contractSize")) if p.get("contractSize") else 1.0)
        mark = _num(p.get("markPrice"))
        notional = abs(_num(p.get("notional"))) if p.get("notional") is not None else abs(qty * mark)
        rows.append({"account": account, "symbol": symbol, "side": p.get("side"), "qty": qty,
                     "entry_price": _num(p.get("entryPrice")), "mark_price": mark,
                     "notional_usd": notional, "min_qty_step": steps.get(symbol, math.nan),
                     "fetched_at": fetched_at, "position_side": leg})
    if not rows:
        return typed(empty_frame(EXCHANGE_POSITIONS), EXCHANGE_POSITIONS)
    return typed(pd.DataFrame(rows, columns=list(EXCHANGE_POSITIONS)), EXCHANGE_POSITIONS)


# Binance's positionSide of a fill -> its leg (core.rules.POSITION_LEGS).
BINANCE_TO_LEG = {"BOTH": ONE_WAY, "LONG": POSITION_SIDES[0], "SHORT": POSITION_SIDES[1]}


def fill_leg(trade: dict) -> str:
    """The leg a ccxt trade traded, from Binance's positionSide in its `info`: "both" in
    one-way mode (and when the trade names none: one-way), "long"/"short" in hedge mode. Any
    other value is a malformed fill: ValueError naming the field."""
    info = trade.get("info") or {}
    if "positionSide" not in info:
        return ONE_WAY
    raw = info["positionSide"]
    leg = BINANCE_TO_LEG.get(raw) if isinstance(raw, str) else None
    if leg is None:
        raise ValueError(f"fill {trade.get('id')!r} of {trade.get('symbol')!r}: field "
                         f"'positionSide' = {raw!r} is not one of {sorted(BINANCE_TO_LEG)}")
    return leg


def fill_rows(account: str, trades: list[dict], client_ids: dict[str, str],
              fee_prices: dict[str, Any] | None = None) -> list[dict]:
    """Rows for recon.exchange_fills from ccxt trades; the client_order_id comes from the order
    (Binance's userTrades does not carry it), None when unknown. The fee keeps its asset and
    amount; its USD value (`core.fees`, with `fee_prices` by fill id for non-USD assets) is None
    when unknown, never zero. position_side is the fill's leg (`fill_leg`)."""
    rows = []
    for t in trades:
        leg = fill_leg(t)
        fee_data = t.get("fee") or {}
        fee = fee_of(fee_data.get("cost"), fee_data.get("currency"),
                     (fee_prices or {}).get(str(t["id"])))
        order_id = str(t["order"])
        rows.append({
            "exchange_account": account, "symbol": t["symbol"], "exchange_fill_id": str(t["id"]),
            "exchange_order_id": order_id, "client_order_id": client_ids.get(order_id),
            "side": t["side"], "qty": _num(t["amount"]), "price": _num(t["price"]),
            "fee_usd": fee.usd, "fee_asset": fee.asset, "fee_amount": fee.amount,
            "filled_at": _ts(t["timestamp"]), "position_side": leg})
    return rows


def fills_frame(account: str, rows: list[dict], fetched_at: pd.Timestamp,
                hedged: bool = False) -> pd.DataFrame:
    """EXCHANGE_FILLS from stored fill rows. A row without its leg (stored before fills kept
    it) is on "both" for a one-way account and unknown (None) for a hedge-mode one (`hedged`):
    `frames.with_fill_legs`."""
    if not rows:
        return typed(empty_frame(EXCHANGE_FILLS), EXCHANGE_FILLS)
    frame = with_fill_legs(pd.DataFrame(rows), hedged)
    frame = frame.rename(columns={"exchange_account": "account"})
    frame["account"] = account
    frame["notional_usd"] = frame["qty"].astype(float) * frame["price"].astype(float)
    frame["fetched_at"] = fetched_at
    frame = frame.sort_values(["filled_at", "symbol", "exchange_fill_id"], kind="stable")
    return typed(frame.loc[:, list(EXCHANGE_FILLS)].reset_index(drop=True), EXCHANGE_FILLS)


_FLOATS = {"qty", "filled_qty", "price", "notional_usd", "entry_price", "mark_price",
           "min_qty_step", "fee_usd", "fee_amount"}
_TIMES = {"created_at", "fetched_at", "filled_at"}


def typed(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """Exactly `columns`, floats as float64, times as UTC timestamps, the rest as objects."""
    frame = frame.loc[:, list(columns)].copy()
    for column in columns:
        if column in _FLOATS:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
        elif column in _TIMES:
            frame[column] = pd.to_datetime(frame[column], utc=True)
        else:
            frame[column] = frame[column].astype("object")
    return frame


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    problems: tuple[str, ...]


def evaluate_snapshot(*, read_started: float, read_finished: float, checked_at: float,
                      max_age_s: float, max_spread_s: float, missing_symbols: Iterable[str] = (),
                      incomplete_symbols: Iterable[str] = ()) -> CheckOutcome:
    """Fresh: read within `max_spread_s` from first to last response, and no older than
    `max_age_s` now. Complete: no symbol that matters is missing, no fill read was cut short."""
    problems = []
    spread = read_finished - read_started
    if spread > max_spread_s:
        problems.append(f"the reads spread over {spread:.1f} s (> {max_spread_s:.0f} s): not one picture")
    age = checked_at - read_started
    if age > max_age_s:
        problems.append(f"the snapshot is {age:.1f} s old (> {max_age_s:.0f} s)")
    missing = sorted(missing_symbols)
    if missing:
        problems.append(f"no row for symbol(s) that matter: {', '.join(missing)}")
    incomplete = sorted(incomplete_symbols)
    if incomplete:
        problems.append(f"fills not read to the end (page cap) for: {', '.join(incomplete)}")
    return CheckOutcome(not problems, tuple(problems))


def preview(frame: pd.DataFrame, rows: int = 20) -> str:
    """A markdown table of the first rows, for the UI."""
    if frame.empty:
        return "_no rows_"
    shown = frame.head(rows).copy()
    for column in shown.columns:
        if str(shown[column].dtype).startswith("datetime64"):
            shown[column] = shown[column].dt.strftime("%Y-%m-%d %H:%M:%S")
    text = shown.to_markdown(index=False)
    return text if len(frame) <= rows else text + f"\n\n_{len(frame) - rows} more rows_"
