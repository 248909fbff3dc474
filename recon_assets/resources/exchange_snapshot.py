"""One account's exchange snapshot, read in one pass: the I/O around the decisions of
`core.exchange_snapshot` (no Dagster here: the assets, the demo and the benchmark call
`read_exchange_snapshot`).

The order of reads: markets (cached per process); every position (one request), which also
names each symbol with open orders; the open orders, regular and conditional (the Algo Service
holds those), of the database's symbols and the listed ones, one request per symbol while that
is cheaper than one for all (`core.request_weights`); when due, the income history, which
names the symbols with trades since the last sweep (every symbol: fills the snapshot would not
otherwise consider); then fills only for the symbols that matter and may have new fills, and
the symbols the income history named, from each symbol's cursor; then, for fills whose order
is unknown, a targeted order lookup to learn its client_order_id. Any failed read raises: nothing is stored and no frame is returned.
New fills and moved cursors are stored in one transaction at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd

from recon_assets.core.exchange_snapshot import (activity_key, db_symbols, evaluate_snapshot,
                                                 exchange_symbols, fill_rows, fills_frame,
                                                 flat_symbols, income_sweep_due,
                                                 income_sweep_start, next_income_cursor,
                                                 open_orders_frame, plan_fill_reads,
                                                 positions_frame, utc_from_ms)
from recon_assets.core.request_weights import per_symbol_is_cheaper
from recon_assets.resources.database import TradingStore
from recon_assets.resources.exchange import (ExchangeBudgetSpent, ExchangeFetchError,
                                             ExchangeResource, ExchangeSession, RequestStats)
from recon_assets.resources.fill_store import FillStore


@dataclass
class ExchangeSnapshot:
    account: str
    open_orders: pd.DataFrame
    positions: pd.DataFrame
    fills: pd.DataFrame
    stats: RequestStats
    symbols: list[str]  # the symbols that matter
    fill_reads: list[str]  # symbols whose fills were read this cycle
    incomplete: list[str]  # symbols whose fill read hit the page cap
    new_fills: int
    probes: int
    probe_errors: list[str] = field(default_factory=list)
    read_started: float = 0.0  # wall-clock time before the positions were read
    read_finished: float = 0.0  # and after the open orders were
    orders_read_per_symbol: bool = True  # open orders read one symbol at a time (cheaper)
    hedged: bool = False  # the account is in hedge mode: positions are per leg
    # The income sweep: "read", "not_due", "off" or "deferred" (the egress budget was spent),
    # the symbols it named that the cycle would not have read, and symbols it named that are
    # not markets (reported: their fills cannot be read).
    income_sweep: str = "not_due"
    income_symbols: list[str] = field(default_factory=list)
    income_strangers: list[str] = field(default_factory=list)

    def outcome(self, resource: ExchangeResource, asset: str, checked_at: float | None = None):
        """The freshness/completeness verdict for one of the three frames."""
        missing = []
        if asset == "exchange_positions":
            missing = sorted(set(self.symbols) - set(self.positions["symbol"]))
        return evaluate_snapshot(
            read_started=self.read_started, read_finished=self.read_finished,
            checked_at=time.time() if checked_at is None else checked_at,
            max_age_s=resource.max_snapshot_age_s, max_spread_s=resource.max_snapshot_spread_s,
            missing_symbols=missing,
            incomplete_symbols=self.incomplete if asset == "exchange_fills" else ())


def read_exchange_snapshot(resource: ExchangeResource, database: TradingStore, account: str,
                           run_id: str, session: ExchangeSession | None = None) -> ExchangeSnapshot:
    db = database.snapshot_account(account)
    own_session = session is None
    session = session or resource.session(account, database=database)
    try:
        return _read(resource, database, account, run_id, session, db)
    finally:
        if own_session:
            session.close()


def _require_markets(session: ExchangeSession, account: str, symbols) -> None:
    """Every symbol that matters is a market: markets loaded before a new listing are read
    again once, then an unknown symbol fails the snapshot."""
    unknown = sorted(s for s in symbols if s not in session.client.markets)
    if unknown:
        session.reload_markets_once()
        unknown = sorted(s for s in symbols if s not in session.client.markets)
    if unknown:
        raise ExchangeFetchError(
            f"{account}: symbol(s) {', '.join(unknown)} are not markets of "
            f"{session.resource.exchange_id}; the snapshot cannot say whether they are flat")


def _read(resource, database, account, run_id, session, db) -> ExchangeSnapshot:
    session.load_markets()  # (reloaded once by the session if an answer names a newer listing)
    read_started = time.time()  # the picture: positions and open orders, read back to back
    # Positions first: positionRisk names every symbol with a position or open orders, so the
    # open orders can be read per symbol (weight 1 each, where all at once weighs 40).
    positions, listed, hedged = session.fetch_positions()
    positions_at = pd.Timestamp.now(tz="UTC")
    in_db = db_symbols(db)
    order_symbols = sorted(in_db | listed)
    _require_markets(session, account, order_symbols)
    per_symbol = per_symbol_is_cheaper(len(order_symbols))
    plan = order_symbols if per_symbol else None
    # Regular and conditional (Algo Service) orders are one picture for the diff.
    orders = session.fetch_open_orders(plan) + session.fetch_open_conditional_orders(plan)
    orders_at = pd.Timestamp.now(tz="UTC")
    read_finished = time.time()

    symbols = in_db | exchange_symbols(orders, positions)
    _require_markets(session, account, symbols)
    flat_marks = session.fetch_mark_prices(flat_symbols(symbols, positions))

    now_ms = int(time.time() * 1000)
    window_ms = resource.fills_window_hours * 3_600_000
    store = FillStore(database)
    cursors = store.cursors(account)
    keys = {s: activity_key(s, orders, positions) for s in symbols}
    to_read = plan_fill_reads(symbols, keys, cursors, now_ms, resource.fills_max_skip_s * 1000)

    trades: list[dict] = []
    new_cursors: dict[str, dict] = {}
    incomplete: list[str] = []

    def read_fills(symbol: str) -> None:
        cursor = cursors.get(symbol)
        after = cursor.last_fill_id if cursor else None
        read, complete = session.fetch_fills(symbol, after, None if after is not None else now_ms - window_ms)
        trades.extend(read)
        last = max((int(t["id"]) for t in read), default=after)
        last_at = max((t["timestamp"] for t in read), default=None)
        if not complete:
            incomplete.append(symbol)
        new_cursors[symbol] = {
            "last_fill_id": last, "last_fill_at": utc_from_ms(last_at) if last_at else None,
            # Cut short: no fingerprint, so the next cycle reads on from the cursor.
            "activity_key": keys.get(symbol) if complete else None,
            "read_at": utc_from_ms(now_ms)}

    for symbol in to_read:
        read_fills(symbol)

    # The income sweep, after the reads the cycle cannot do without: fills on symbols nothing
    # above points at. When the egress budget has no room for it, it waits for a later cycle
    # (its cursor unmoved) and this one goes on.
    sweep, income_symbols, strangers, income_cursor = "not_due", [], [], None
    swept = store.income_cursor(account)
    if resource.income_sweep_interval_s <= 0:
        sweep = "off"
    elif income_sweep_due(swept[1] if swept else None, now_ms,
                          resource.income_sweep_interval_s * 1000):
        exchange_now = session.exchange_now_ms()
        start = income_sweep_start(swept[0] if swept else None, exchange_now, window_ms)
        try:
            traded, foreign, last_ms, complete = session.fetch_traded_symbols(start)
            strangers = sorted(foreign)
            for symbol in sorted(traded - set(to_read)):
                read_fills(symbol)
                income_symbols.append(symbol)
        except ExchangeBudgetSpent:
            sweep = "deferred"
        else:
            sweep = "read"
            income_cursor = {"last_income_ms": next_income_cursor(start, last_ms, exchange_now, complete),
                             "swept_at": utc_from_ms(now_ms)}
    to_read = to_read + income_symbols

    # client_order_id of each fill: from the open orders, the database, earlier cycles, and,
    # for what is still unknown, one lookup of the order.
    client_ids = {str(o["id"]): o["clientOrderId"] for o in orders if o.get("clientOrderId")}
    for o in db.get("orders") or []:
        if o.get("exchange_order_id") and o.get("client_order_id"):
            client_ids.setdefault(str(o["exchange_order_id"]), o["client_order_id"])
    order_ids = sorted({str(t["order"]) for t in trades} - set(client_ids))
    client_ids.update(store.known_client_ids(account, order_ids))
    window_start = utc_from_ms(now_ms - window_ms)
    wanted = [(str(t["order"]), t["symbol"]) for t in trades if str(t["order"]) not in client_ids]
    wanted += store.unresolved_orders(account, window_start)
    learnt: dict[str, str] = {}
    probe_errors: list[str] = []
    probes = 0
    for order_id, symbol in dict.fromkeys(wanted):
        if order_id in client_ids or order_id in learnt:
            continue
        if probes >= resource.max_order_probes:
            break
        probes += 1
        try:
            order = session.fetch_order(order_id, symbol)
        except ExchangeFetchError as exc:  # attribution stays unknown: hands off, not a failure
            probe_errors.append(str(exc))
            continue
        if order.get("clientOrderId"):
            learnt[order_id] = order["clientOrderId"]
    client_ids.update(learnt)

    rows = fill_rows(account, trades, client_ids, session.fee_prices(trades))
    new_fills, window = store.save_and_read_window(account, run_id, rows, new_cursors, learnt,
                                                   window_start, income_cursor)
    finished_at = pd.Timestamp.now(tz="UTC")
    mark_prices = {p["symbol"]: float(p["markPrice"]) for p in positions if p.get("markPrice")}
    markets = session.client.markets
    steps = {s: float(markets[s]["precision"]["amount"]) for s in symbols
             if markets[s].get("precision", {}).get("amount") is not None}
    stats = session.stats
    return ExchangeSnapshot(
        account=account,
        open_orders=open_orders_frame(account, orders, mark_prices, orders_at),
        positions=positions_frame(account, symbols, positions, steps, positions_at, flat_marks,
                                  hedged),
        hedged=hedged,
        fills=fills_frame(account, window, finished_at, hedged),
        stats=stats, symbols=sorted(symbols), fill_reads=to_read, incomplete=incomplete,
        new_fills=new_fills, probes=probes, probe_errors=probe_errors,
        read_started=read_started, read_finished=read_finished, orders_read_per_symbol=per_symbol,
        income_sweep=sweep, income_symbols=income_symbols, income_strangers=strangers)

