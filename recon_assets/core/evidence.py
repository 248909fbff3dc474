"""Real evidence that is waiting to be booked (safety rule 14: "real evidence first, and wait for
it"), as one pure function of a cycle's snapshots. No I/O, no Dagster.

While any of these holds for a slice's trade, the parity heartbeat never closes the slice at the
mark price; it is `held` with the reason (`core.parity`), and the real evidence is booked by the
lifecycle correction, the EXIT backfill or an operator:

- **open_exit_order**: an EXIT order of the trade is open in the database (the exchange filled,
  cancelled or still rests it: the lifecycle correction resolves it first; the SQL synthetic exit
  refuses while it is open);
- **unbooked_fill**: an exchange fill of one of the trade's orders (entry or exit, whatever the
  order's status in the database: also an order the database holds as cancelled while the
  exchange filled it) is not booked in `applied_fills`;
- **refused_correction**: a lifecycle correction of one of the trade's open orders was refused
  or failed and no later correction of that order was applied;
- **backfill_candidate**: a real exit fill is an EXIT backfill candidate for the slice (GO, or
  NO_GO awaiting an operator: "for operator review instead of auto-closing"); an unattributed
  fill holds every slice it could be the exit of, also when a heuristic proposes one of them
  (its pick is a guess until an operator approves it); a fill whose own id
  rules the slices out (another account's tag, an ENTRY id, another trade) holds nothing, and
  neither does a pair an operator rejected;
- **recent_fill**: an exit-side fill on the slice's symbol newer than the database read less
  the recency guard (looked at next cycle).

Besides the holds: how much of each leg's gap (`core.book.judge_leg`) the waiting evidence
explains (fills of the database's orders, entries and exits, not booked yet or filled on the
exchange beyond what the database holds, which the lifecycle correction books; the EXIT
backfill's GO fills), what each profile's own fills of orders the database never recorded are
worth (`unrecorded`), and which profiles' own
sub-tagged fills, not booked yet, are on each leg (the integrity watchdog charges a position
drift to them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pandas as pd

from recon_assets.core.attribution import parse_client_order_id, tagged_sub_tag
from recon_assets.core.book import signed
from recon_assets.core.rules import (GO, NO_GO, ONE_WAY, OPEN_ORDER_STATUSES, OPEN_SLICE_STATUS,
                                     POSITION_SIDES)

SliceKey = tuple[str, str, int]  # (profile_id, trade_id, slice_no)
LegKey = tuple[str, str]  # (symbol, leg): leg "both" in one-way mode, "long"/"short" in hedge

(OPEN_EXIT_ORDER, UNBOOKED_FILL, REFUSED_CORRECTION, BACKFILL_CANDIDATE,
 RECENT_FILL) = EVIDENCE_KINDS = ("open_exit_order", "unbooked_fill", "refused_correction",
                                  "backfill_candidate", "recent_fill")


@dataclass
class Evidence:
    """What real evidence waits for which slice, and what it explains."""

    # slice -> [(kind, why)], in the order found; `hold_reason` says it in one line
    holds: dict[SliceKey, list[tuple[str, str]]] = field(default_factory=dict)
    explained: dict[LegKey, float] = field(default_factory=dict)  # signed qty of the gap
    fill_profiles: dict[LegKey, set[str]] = field(default_factory=dict)
    # profile -> USD of its own fills (its sub tag) of orders the database never recorded, not
    # booked: drift no order finding shows (a lost order), charged by the watchdog
    unrecorded: dict[str, float] = field(default_factory=dict)

    def hold_reason(self, key: SliceKey) -> str | None:
        """Why the slice waits for real evidence, or None."""
        found = self.holds.get(key)
        if not found:
            return None
        return "; ".join(why for _kind, why in found)

    def _hold(self, key: SliceKey, kind: str, why: str) -> None:
        found = self.holds.setdefault(key, [])
        if (kind, why) not in found:
            found.append((kind, why))


def _text(value) -> str | None:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _number(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _time(value) -> pd.Timestamp | None:
    if value is None or value is pd.NaT:
        return None
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        return None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def fill_leg(hedged: bool, side: str, position_side: object) -> str | None:
    """The leg a fill moved: one-way, the net position; hedge mode, the leg Binance names
    (None when a hedge-mode fill does not say: it could be either)."""
    if not hedged:
        return ONE_WAY
    leg = _text(position_side)
    return leg.lower() if leg and leg.lower() in POSITION_SIDES else None


def order_leg(intent: str | None, side: str, hedged: bool) -> str:
    """The leg an order of ours moves: one-way, the net position; hedge mode, an ENTRY buy or an
    EXIT sell the long leg, the others the short."""
    if not hedged:
        return ONE_WAY
    return "long" if (side == "buy") == ((intent or "ENTRY") == "ENTRY") else "short"


def exits_side(side: str, leg: str | None) -> str | None:
    """The slice side a fill exits: one-way, a sell exits a long and a buy a short; hedge mode, a
    sell on the long leg or a buy on the short leg (a sell on the short leg opens a short); a
    hedge-mode fill whose leg is not known (None) is no exit anyone can book."""
    if leg == ONE_WAY:
        return "long" if side == "sell" else "short"
    if (leg, side) in (("long", "sell"), ("short", "buy")):
        return leg
    return None


def _orders_by_id(orders: pd.DataFrame) -> dict[str, dict]:
    """Client order id and exchange order id -> the database's order."""
    order_of: dict[str, dict] = {}
    for o in orders.to_dict("records"):
        for column in ("client_order_id", "exchange_order_id"):
            ident = _text(o.get(column))
            if ident:
                order_of[ident] = o
    return order_of


def pending_order_moves(*, orders: pd.DataFrame, fills: pd.DataFrame,
                        booked: Iterable[tuple[str, str]], hedged: bool,
                        exchange_open_orders: pd.DataFrame | None = None) -> dict[LegKey, float]:
    """Per leg, the signed qty of the gap between the slices and the exchange that the
    database's own orders explain: what the exchange filled of them beyond what the database
    holds (their fills not booked, or an open order's filled qty beyond the database's), which
    the lifecycle correction books. An exit of a long (a sell) explains +qty of a claim the
    slices still make; an entry buy explains -qty the slices do not make yet."""
    booked = {(str(s), str(f)) for s, f in booked}
    order_of = _orders_by_id(orders)
    behind: dict[str, float] = {}  # DB order -> qty the exchange filled it beyond the DB
    for r in fills.itertuples():
        order = order_of.get(_text(r.client_order_id) or "") or order_of.get(
            _text(r.exchange_order_id) or "")
        if order is not None and (r.symbol, str(r.exchange_fill_id)) not in booked:
            ident = str(order["client_order_id"])
            behind[ident] = behind.get(ident, 0.0) + _number(r.qty)
    if exchange_open_orders is not None and len(exchange_open_orders):
        for e in exchange_open_orders.to_dict("records"):
            order = order_of.get(_text(e.get("client_order_id")) or "")
            if order is not None:
                ident = str(order["client_order_id"])
                extra = _number(e.get("filled_qty")) - _number(order.get("filled_qty"))
                behind[ident] = max(behind.get(ident, 0.0), extra)
    out: dict[LegKey, float] = {}
    for ident, qty in behind.items():
        order = order_of[ident]
        if qty <= 0:
            continue
        leg_key = (order["symbol"], order_leg(order.get("intent"), order["side"], hedged))
        moved = qty if order["side"] == "buy" else -qty  # how the exchange's position moved
        out[leg_key] = out.get(leg_key, 0.0) - moved
    return out


def pending_evidence(*, slices: pd.DataFrame, profiles: pd.DataFrame, orders: pd.DataFrame,
                     fills: pd.DataFrame, booked: Iterable[tuple[str, str]], hedged: bool,
                     exchange_open_orders: pd.DataFrame | None = None,
                     backfill: pd.DataFrame | None = None,
                     refusals: Iterable[Mapping] = (),
                     db_read_at: pd.Timestamp | None = None,
                     recency_guard_s: float = 0.0) -> Evidence:
    """The waiting evidence of one account's cycle (see the module docstring). `slices`,
    `profiles`, `orders`: the database snapshot (DB_TRADE_SLICES, DB_PROFILES, DB_ORDERS);
    `fills`, `exchange_open_orders`: the exchange snapshot (EXCHANGE_FILLS,
    EXCHANGE_OPEN_ORDERS); `booked`: (symbol, fill id) of the fills `applied_fills` holds;
    `backfill`: the cycle's EXIT backfill decisions (BACKFILL_DECISION_COLUMNS, with
    `awaiting_operator`); `refusals`: refused or failed lifecycle corrections not resolved
    (profile_id, trade_id, client_order_id, reason)."""
    out = Evidence()
    booked = {(str(s), str(f)) for s, f in booked}
    open_rows = slices[(slices["status"] == OPEN_SLICE_STATUS) & (slices["virtual_open_qty"] > 0)]
    by_trade: dict[tuple[str, str], list[SliceKey]] = {}
    side_of: dict[SliceKey, str] = {}
    by_exit: dict[tuple[str, str], list[SliceKey]] = {}  # (symbol, slice side) -> slices
    for r in open_rows.itertuples():
        key = (r.profile_id, r.trade_id, int(r.slice_no))
        by_trade.setdefault((r.profile_id, r.trade_id), []).append(key)
        side_of[key] = r.side
        by_exit.setdefault((r.symbol, r.side), []).append(key)
    order_of = _orders_by_id(orders)

    def hold_trade(profile: str, trade: str, kind: str, why: str) -> None:
        for key in by_trade.get((profile, trade), []):
            out._hold(key, kind, why)

    # Open EXIT orders of the database.
    for o in order_of.values():
        if o.get("intent") == "EXIT" and o.get("status") in OPEN_ORDER_STATUSES:
            hold_trade(o["profile_id"], o["trade_id"], OPEN_EXIT_ORDER,
                       f"its EXIT order {o['client_order_id']} is {o['status']} in the database: "
                       "the lifecycle correction resolves it first")

    # Exchange fills not booked: of the database's orders (left to the lifecycle), tagged with
    # a profile's sub tag (the watchdog's evidence), recent ones.
    tags = {t: p for p, t in zip(profiles["profile_id"], profiles["sub_tag"])
            if isinstance(t, str) and t}
    cutoff = (pd.Timestamp(db_read_at) - pd.Timedelta(seconds=float(recency_guard_s))
              if db_read_at is not None else None)
    positions = fills["position_side"] if "position_side" in fills.columns else [None] * len(fills)
    for r, position_side in zip(fills.itertuples(), positions):
        fill_id, symbol = str(r.exchange_fill_id), r.symbol
        if (symbol, fill_id) in booked:
            continue
        leg = fill_leg(hedged, r.side, position_side)
        coid, oid = _text(r.client_order_id), _text(r.exchange_order_id)
        parsed = parse_client_order_id(coid)
        tag = parsed.sub_tag if parsed else tagged_sub_tag(coid)
        if tag in tags:
            for each in ([leg] if leg else list(POSITION_SIDES)):
                out.fill_profiles.setdefault((symbol, each), set()).add(tags[tag])
        order = order_of.get(coid or "") or order_of.get(oid or "")
        if order is None and tag in tags:
            out.unrecorded[tags[tag]] = out.unrecorded.get(tags[tag], 0.0) + \
                _number(r.qty) * _number(r.price)
        if order is not None:
            state = ("holds as " + order["status"] if order.get("status") not in
                     OPEN_ORDER_STATUSES else "holds open")
            hold_trade(order["profile_id"], order["trade_id"], UNBOOKED_FILL,
                       f"fill {fill_id} of its order {order['client_order_id']} (which the "
                       f"database {state}) is not booked: real evidence first")
        exits = exits_side(r.side, leg)
        filled_at = _time(r.filled_at)
        if exits is not None and cutoff is not None and filled_at is not None \
                and filled_at > cutoff:
            for key in by_exit.get((symbol, exits), []):
                out._hold(key, "recent_fill",
                          f"exit-side fill {fill_id} on {symbol} is newer than the database "
                          "read: looked at next cycle")

    out.explained = pending_order_moves(orders=orders, fills=fills, booked=booked,
                                        hedged=hedged, exchange_open_orders=exchange_open_orders)

    for r in refusals:
        hold_trade(r["profile_id"], r["trade_id"], REFUSED_CORRECTION,
                   f"the lifecycle correction of its order {r['client_order_id']} was "
                   f"{r.get('outcome') or 'refused'} ({r.get('reason') or 'no reason'}) and is "
                   "not resolved")

    if backfill is not None and len(backfill):
        for d in backfill.to_dict("records"):
            fill = f"{d['exchange_fill_id']} ({d['symbol']})"
            slice_named = _text(d.get("profile_id")) is not None
            if d["decision"] == GO and slice_named:
                key = (d["profile_id"], d["trade_id"], int(d["slice_no"]))
                out._hold(key, BACKFILL_CANDIDATE,
                          f"real exit fill {fill} is its EXIT backfill (GO)")
                leg = d["slice_side"] if hedged else ONE_WAY
                leg_key = (d["symbol"], leg)
                out.explained[leg_key] = out.explained.get(leg_key, 0.0) + signed(
                    d["slice_side"], _number(d["fill_qty"]))
                continue
            if d["decision"] != NO_GO or not d.get("awaiting_operator", True):
                continue
            named = None
            if slice_named:
                named = (d["profile_id"], d["trade_id"], int(d["slice_no"]))
                out._hold(named, BACKFILL_CANDIDATE,
                          f"real exit fill {fill} is an EXIT backfill candidate for it, NO_GO "
                          "awaiting an operator (approve_backfill / reject_backfill)")
            if named is None or not d.get("strong"):
                # Unattributed: a heuristic's pick (say the one slice of the fill's size) is a
                # guess, so every slice the fill could be the exit of waits for the operator.
                for profile, trade, slice_no in d.get("candidate_keys") or []:
                    if (profile, trade, int(slice_no)) != named:
                        out._hold((profile, trade, int(slice_no)), BACKFILL_CANDIDATE,
                                  f"unattributed real exit fill {fill} could be its exit: NO_GO "
                                  "awaiting an operator")
    return out
