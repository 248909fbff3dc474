"""The EXIT backfill (the runbook's "EXIT backfill safety gates"): which real exchange fills prove
the exit of an open slice the database never recorded, decided `GO` or `NO_GO` as one pure
function of a cycle's snapshots. No I/O, no Dagster: `defs/backfill` fetches, calls, persists.

**Where it looks.** The whole book of each leg (`core.book.judge_leg`: the symbol's net position
in one-way mode, each leg in hedge mode) says where exits happened that the database does not
know: nowhere when the open slices add up to what the exchange holds once the fills of the
database's own orders are booked (a book that nets is in sync, whatever the net); every slice of
a leg the exchange is flat on; otherwise the side the gap points to (slices claim more long, or
more short, than the exchange holds), for at most the gap. That **shortfall** (per symbol and
side) makes the open slices there candidates, and so is every fill of the symbol in the
exchange fills window that exits that side (one-way: a sell exits a long, a buy a short; hedge
mode: a sell on the long leg, a buy on the short leg, by the fill's `position_side`: a sell
that opened a short is no exit), not booked in `applied_fills`. A fill whose id is the
deterministic EXIT id of an open trade there is a candidate whatever the leg's gap: on the side
the gap does not point to (the gap is other slices', say a close before the trade history), and
on a leg in sync (another fill nobody booked, an untagged lost exit, can offset it: booking the
trade's own exit is what shows that other fill's gap). Fills of
an order the database holds are left to that order's lifecycle correction (reconcileExitFill
probes the order and books them); fills newer than the database read minus the recency guard, and
a symbol and side whose slices the trading app changed in that moment, are looked at next cycle.

**How a fill is tied to a slice**, strongest first (`rules.STRONG_MATCH_METHODS`):

1. `client_order_id`: the fill's client order id is the deterministic EXIT id
   (`rc.<sub_tag>.<trade_id>.X<n>`, `core.attribution`) of an open trade of the profile with that
   sub tag; its slices take it oldest first. An id of that form that names another trade, a
   sub tag no profile of the account has, or an ENTRY order is evidence against every slice here:
   `NO_GO`, never guessed at;
2. `sub_tag`: the id starts with the profile's tag (`rc.<sub_tag>.…`) without naming a trade: it
   goes to that profile's one open slice on the symbol and side (several: `NO_GO`, which one is
   not known);
3. `trade_id_hint`: an explicit hint (recon.exit_fill_hints, written by the trading app or an
   operator) ties the fill's exchange order to a trade.

Without any of these the fill is unattributed, and the heuristics (`rules.HEURISTIC_MATCH_METHODS`)
say which slice it would go to: `single_open_trade` (the only open slice of the account and
symbol), then `qty_unique` (the only open slice on the symbol and side whose open qty left equals
the fill's qty). Such a match is `GO` only with `RECON_EXIT_BACKFILL_ALLOW_HEURISTIC_MATCH` and
without `RECON_EXIT_BACKFILL_REQUIRE_STRONG_ATTRIBUTION` (`BackfillPolicy.heuristics_go`);
otherwise it is reported, `NO_GO`, as the match it would have made, for an operator.

**Gates, for every method**: a fill older than the slice's opened time minus
`RECON_EXIT_BACKFILL_FILL_AFTER_TRADE_GRACE_MINUTES` is rejected (history never closes a newer
trade); a fill is never split, so it must fit in the slice's open qty left and in the shortfall
left on its symbol and side (strong fills are placed first, so a heuristic never takes room a
strong fill needs), except a fill whose id is the EXIT id of the slice's own trade: proof on its
own, bounded by the slice's open qty alone (other unbooked fills, a foreign close awaiting an
operator, can net the shortfall smaller than it). An operator's `reject` of a (fill, slice) pair keeps it `NO_GO`; an `approve`
makes it `GO` in the cycles that follow, through the same gates.

**Invariants** (property-tested): a fill is assigned to at most one slice; no slice receives more
exit qty than it has open (a partial exit leaves the rest open); with the strict flags nothing
unattributed is `GO`; stale evidence is never `GO`; the same inputs give the same rows in the
same order (fills by time, symbol and id).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from recon_assets.core.attribution import parse_client_order_id, tagged_sub_tag
from recon_assets.core.book import (EXPLAINED, FLAT_GHOSTS, SUPPORTED, below_step, judge_leg,
                                    signed)
from recon_assets.core.evidence import exits_side, fill_leg, pending_order_moves
from recon_assets.core.frames import finite, is_hedged, leg_of, with_position_legs
from recon_assets.core.rules import (BY_CLIENT_ORDER_ID, BY_SUB_TAG, BY_TRADE_ID_HINT, FLAT, GO,
                                     NO_GO, OPEN_SLICE_STATUS, POSITION_SIDES, QTY_ABS_TOL,
                                     QTY_UNIQUE, REJECT,
                                     SINGLE_OPEN_TRADE, STEP_SLACK, STRONG_MATCH_METHODS)

SliceKey = tuple[str, str, int]  # (profile_id, trade_id, slice_no)
# A (fill, slice) pair an operator reviewed: (symbol, exchange fill id, profile, trade, slice).
PairKey = tuple[str, str, str, str, int]

BACKFILL_DECISION_COLUMNS = (
    "cycle_id", "exchange_account", "symbol", "exchange_fill_id", "exchange_order_id",
    "client_order_id", "fill_side", "fill_qty", "fill_price", "fee_usd", "filled_at",
    "profile_id", "trade_id", "slice_no", "slice_side", "slice_open_qty", "slice_opened_at",
    "candidate_slices", "match_mode", "strong", "assignable", "decision", "reason",
    "idempotency_key", "awaiting_operator", "candidate_keys",
)
SHORTFALL_COLUMNS = ("symbol", "side", "claimed_qty", "exchange_qty", "shortfall_qty", "go_qty",
                     "slices")


@dataclass(frozen=True)
class BackfillPolicy:
    """The runbook's three EXIT backfill flags."""

    require_strong_attribution: bool = True
    allow_heuristic_match: bool = False
    grace_minutes: float = 5.0

    @property
    def heuristics_go(self) -> bool:
        """Whether a heuristic match may be applied: heuristics allowed and strong attribution
        not required (either flag alone keeps it for an operator)."""
        return self.allow_heuristic_match and not self.require_strong_attribution

    def heuristic_held_back_by(self) -> str:
        flags = []
        if not self.allow_heuristic_match:
            flags.append("RECON_EXIT_BACKFILL_ALLOW_HEURISTIC_MATCH is false")
        if self.require_strong_attribution:
            flags.append("RECON_EXIT_BACKFILL_REQUIRE_STRONG_ATTRIBUTION is true")
        return " and ".join(flags)


@dataclass(frozen=True)
class Review:
    """An operator's latest call on a (fill, slice) pair."""

    verdict: str  # rules.BACKFILL_VERDICTS
    review_id: int
    note: str = ""


@dataclass
class BackfillResult:
    decisions: pd.DataFrame  # BACKFILL_DECISION_COLUMNS, one row per candidate fill
    shortfalls: pd.DataFrame  # SHORTFALL_COLUMNS, one row per symbol and side with a shortfall
    left_to_lifecycle: list[str] = field(default_factory=list)  # fills of orders the DB holds
    held_recent: list[str] = field(default_factory=list)  # fills newer than the recency cutoff
    held_slices: list[str] = field(default_factory=list)  # slices changed a moment before the read


def exit_backfill_key(profile_id: str, trade_id: str, slice_no: int, account: str, symbol: str,
                      exchange_fill_id: str) -> str:
    """The idempotency key of booking one exchange fill as an exit of one slice: the same pair is
    the same correction in every cycle, whoever applies it (the exit_backfill job or an
    operator's approval)."""
    payload = json.dumps(["recon-exit-backfill/v1", profile_id, trade_id, int(slice_no), account,
                          symbol, str(exchange_fill_id)], separators=(",", ":"))
    digest = hashlib.sha256(payload.encode()).hexdigest()[:32]
    return f"exit_backfill:{profile_id}:{trade_id}:{int(slice_no)}:{digest}"


@dataclass
class _Slice:
    key: SliceKey
    symbol: str
    side: str
    open_qty: float
    opened_at: pd.Timestamp | None
    left: float  # open qty not yet taken by a fill this cycle
    updated_at: pd.Timestamp | None = None

    @property
    def label(self) -> str:
        return f"{self.key[0]}/{self.key[1]}/{self.key[2]}"


@dataclass
class _Fill:
    symbol: str
    fill_id: str
    order_id: str | None
    client_order_id: str | None
    side: str  # buy | sell
    qty: float
    price: float
    fee_usd: float | None
    filled_at: pd.Timestamp
    exits: str | None  # the slice side it exits (`core.evidence.exits_side`); None: no exit


@dataclass
class _Match:
    method: str | None
    targets: list[_Slice]
    why: str
    strong: bool



def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    return str(value)


def _time(value) -> pd.Timestamp | None:
    if value is None or value is pd.NaT:
        return None
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        return None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _fits(qty: float, room: float, step: float) -> bool:
    return qty <= room + max(step * STEP_SLACK, QTY_ABS_TOL)


def exit_backfill_decisions(*, cycle_id: str, account: str, slices: pd.DataFrame,
                            profiles: pd.DataFrame, orders: pd.DataFrame,
                            exchange_positions: pd.DataFrame, fills: pd.DataFrame,
                            policy: BackfillPolicy,
                            booked: frozenset[tuple[str, str]] = frozenset(),
                            hints: Mapping[str, tuple[str, str]] | None = None,
                            reviews: Mapping[PairKey, Review] | None = None,
                            db_read_at: pd.Timestamp | None = None,
                            recency_guard_s: float = 0.0) -> BackfillResult:
    """One decision per candidate exit fill of `account` (see the module docstring for the
    rules). `slices`, `profiles`, `orders`: the database snapshot (DB_TRADE_SLICES, DB_PROFILES,
    DB_ORDERS); `exchange_positions`, `fills`: the exchange snapshot (EXCHANGE_POSITIONS,
    EXCHANGE_FILLS); `booked`: (symbol, exchange fill id) of fills `applied_fills` holds;
    `hints`: exchange order id -> (profile, trade); `reviews`: operators' calls on pairs."""
    hints, reviews = dict(hints or {}), dict(reviews or {})
    profile_of_tag = {t: p for p, t in zip(profiles["profile_id"], profiles["sub_tag"])
                      if isinstance(t, str) and t}
    open_rows = slices[(slices["status"] == OPEN_SLICE_STATUS) & (slices["virtual_open_qty"] > 0)]
    open_slices = sorted(
        (_Slice((r.profile_id, r.trade_id, int(r.slice_no)), r.symbol, r.side,
                float(r.virtual_open_qty), _time(r.opened_at), float(r.virtual_open_qty),
                _time(r.updated_at))
         for r in open_rows.itertuples()), key=lambda s: s.key)
    # One-way: a side's slices against the symbol's position; hedge mode: against their leg.
    hedged = is_hedged(exchange_positions)
    positions = {(r.symbol, r.position_side): r
                 for r in with_position_legs(exchange_positions).itertuples()}
    cutoff = (pd.Timestamp(db_read_at) - pd.Timedelta(seconds=float(recency_guard_s))
              if db_read_at is not None else None)
    held_slices: list[str] = []

    # Shortfalls: per symbol and side, what the open slices claim beyond what the exchange holds,
    # judged on the whole book of each leg (a book that nets has none).
    groups: dict[tuple[str, str], list[_Slice]] = {}
    legs: dict[tuple[str, str], list[_Slice]] = {}
    for s in open_slices:
        groups.setdefault((s.symbol, s.side), []).append(s)
        legs.setdefault((s.symbol, leg_of(hedged, s.side)), []).append(s)
    steps: dict[str, float] = {}
    room: dict[tuple[str, str], float] = {}
    shortfall_rows = []
    checked: set[tuple[str, str]] = set()  # legs the exchange snapshot has a position row for
    # What the database's own orders filled beyond it explains of each gap (left to the lifecycle).
    moves = pending_order_moves(orders=orders, fills=fills, booked=booked, hedged=hedged)
    for (symbol, leg), members in sorted(legs.items()):
        position = positions.get((symbol, leg))
        if position is None:  # not checked this cycle: no shortfall can be known
            continue
        checked.add((symbol, leg))
        step = finite(position.min_qty_step) or QTY_ABS_TOL
        steps[symbol] = step
        exchange = 0.0 if position.side == FLAT else signed(position.side, float(position.qty))
        verdict = judge_leg({s.key: signed(s.side, s.open_qty) for s in members}, exchange, step,
                            moves.get((symbol, leg), 0.0))
        if verdict.state in (SUPPORTED, EXPLAINED):
            continue
        for side in POSITION_SIDES:
            mine = [s for s in members if s.side == side]
            claimed = sum(s.open_qty for s in mine)
            if verdict.state == FLAT_GHOSTS:  # the exchange holds nothing: all of it is gone
                short = claimed
            else:  # part is held: the side the unexplained gap points to, for at most it
                short = min(claimed, max(0.0, signed(side, verdict.left)))
            if not mine or below_step(short, step):
                continue
            held = abs(exchange) if signed(side, exchange) > 0 else 0.0
            room[(symbol, side)] = short
            shortfall_rows.append({"symbol": symbol, "side": side, "claimed_qty": claimed,
                                   "exchange_qty": held, "shortfall_qty": short,
                                   "go_qty": 0.0, "slices": [s.label for s in mine]})

    def changed(symbol: str, side: str) -> list[_Slice]:
        return [s for s in groups.get((symbol, side), []) if cutoff is not None
                and s.updated_at is not None and s.updated_at > cutoff]

    if cutoff is not None:  # the recency guard: a side whose slices just changed waits a cycle
        for symbol, side in list(room):
            if changed(symbol, side):
                del room[(symbol, side)]
                held_slices.extend(s.label for s in changed(symbol, side))
                shortfall_rows = [r for r in shortfall_rows
                                  if (r["symbol"], r["side"]) != (symbol, side)]
    db_ids = {str(v) for column in ("client_order_id", "exchange_order_id")
              for v in orders[column].dropna()} if len(orders) else set()
    candidates: list[_Fill] = []
    left_to_lifecycle: list[str] = []
    held_recent: list[str] = []
    position_sides = (fills["position_side"] if "position_side" in fills.columns
                      else [None] * len(fills))
    for r, position_side in zip(fills.itertuples(), position_sides):
        fill = _Fill(r.symbol, str(r.exchange_fill_id), _text(r.exchange_order_id),
                     _text(r.client_order_id), r.side, float(r.qty), float(r.price),
                     finite(r.fee_usd), _time(r.filled_at),
                     exits_side(r.side, fill_leg(hedged, r.side, position_side)))
        if (fill.symbol, fill.fill_id) in booked:
            continue
        if fill.client_order_id in db_ids or fill.order_id in db_ids:
            left_to_lifecycle.append(fill.fill_id)
            continue
        if fill.exits is None:
            continue
        if (fill.symbol, fill.exits) not in room and not (
                (fill.symbol, leg_of(hedged, fill.exits)) in checked
                and _names_own_trade(fill, groups.get((fill.symbol, fill.exits), []),
                                     profile_of_tag)
                and not changed(fill.symbol, fill.exits)):
            continue
        if cutoff is not None and fill.filled_at is not None and fill.filled_at > cutoff:
            held_recent.append(fill.fill_id)
            continue
        candidates.append(fill)

    matches = {(f.symbol, f.fill_id): _strong_match(f, groups[(f.symbol, f.exits)],
                                                    profile_of_tag, hints, account)
               for f in candidates}

    def order(f: _Fill):
        return (f.filled_at or pd.Timestamp.min.tz_localize("UTC"), f.symbol, f.fill_id)

    strong_first = sorted((f for f in candidates if matches[(f.symbol, f.fill_id)].strong),
                          key=order)
    weak_after = sorted((f for f in candidates if not matches[(f.symbol, f.fill_id)].strong),
                        key=order)
    rows = []
    grace = pd.Timedelta(minutes=float(policy.grace_minutes))
    for fill in strong_first + weak_after:
        group = groups[(fill.symbol, fill.exits)]
        match = matches[(fill.symbol, fill.fill_id)]
        if not match.strong:
            match = _heuristic_match(fill, group, [s for s in open_slices if s.symbol == fill.symbol],
                                     steps[fill.symbol])
        rows.append(_decide(fill, match, group, room, steps[fill.symbol], grace, policy,
                            reviews, cycle_id, account))
    shortfalls = pd.DataFrame(shortfall_rows, columns=list(SHORTFALL_COLUMNS))
    decisions = pd.DataFrame(rows, columns=list(BACKFILL_DECISION_COLUMNS))
    if len(decisions):
        decisions = decisions.sort_values(["filled_at", "symbol", "exchange_fill_id"],
                                          kind="stable").reset_index(drop=True)
        # Whole slice numbers or none (not 1.0 / NaN), as recon.backfill_decisions takes them.
        decisions["slice_no"] = pd.Series([None if pd.isna(v) else int(v)
                                           for v in decisions["slice_no"]], dtype=object)
        go = decisions[decisions["decision"] == GO]
        for i, s in shortfalls.iterrows():
            mine = go[(go["symbol"] == s["symbol"]) & (go["slice_side"] == s["side"])]
            shortfalls.at[i, "go_qty"] = float(mine["fill_qty"].sum())
    return BackfillResult(decisions, shortfalls, sorted(left_to_lifecycle), sorted(held_recent),
                          sorted(held_slices))


def _strong_match(fill: _Fill, group: list[_Slice], profile_of_tag: Mapping[str, str],
                  hints: Mapping[str, tuple[str, str]], account: str) -> _Match:
    """The attribution the fill carries; `strong=False` when it carries none (heuristics may
    look), `method=None` with `strong=True` when what it carries rules every slice here out."""
    coid = fill.client_order_id
    where = f"open {fill.exits} slice on {fill.symbol}"
    parsed = parse_client_order_id(coid)
    tag = parsed.sub_tag if parsed else tagged_sub_tag(coid)
    if tag is not None:
        profile = profile_of_tag.get(tag)
        if profile is None:
            return _Match(None, [], f"its client order id {coid} carries sub tag {tag}, which no "
                                    f"profile of {account} has: not this account's profiles' to book",
                          True)
        if parsed is not None:
            if parsed.intent != "EXIT":
                return _Match(None, [], f"its client order id {coid} is an ENTRY order of trade "
                                        f"{parsed.trade_id} of profile {profile}: not an exit", True)
            trade = [s for s in group if s.key[0] == profile and s.key[1] == parsed.trade_id]
            if not trade:
                return _Match(None, [], f"its client order id {coid} names trade "
                                        f"{parsed.trade_id} of profile {profile}, which has no "
                                        f"{where}", True)
            return _Match(BY_CLIENT_ORDER_ID, trade, f"its client order id {coid} is the EXIT id "
                                                     f"of trade {parsed.trade_id} of profile "
                                                     f"{profile}", True)
        mine = [s for s in group if s.key[0] == profile]
        if not mine:
            return _Match(None, [], f"its client order id {coid} carries sub tag {tag} of profile "
                                    f"{profile}, which has no {where}", True)
        if len(mine) > 1:
            return _Match(None, [], f"its client order id {coid} carries sub tag {tag} of profile "
                                    f"{profile}, which has {len(mine)} open {fill.exits} slices "
                                    f"on {fill.symbol}: the id does not say which", True)
        return _Match(BY_SUB_TAG, mine, f"its client order id {coid} carries sub tag {tag} of "
                                        f"profile {profile}, whose only {where} this is", True)
    hint = hints.get(fill.order_id) if fill.order_id else None
    if hint is not None:
        profile, trade_id = hint
        trade = [s for s in group if s.key[0] == profile and s.key[1] == trade_id]
        if not trade:
            return _Match(None, [], f"a trade id hint ties order {fill.order_id} to trade "
                                    f"{trade_id} of profile {profile}, which has no {where}", True)
        return _Match(BY_TRADE_ID_HINT, trade, f"a trade id hint ties order {fill.order_id} to "
                                               f"trade {trade_id} of profile {profile}", True)
    return _Match(None, [], "", False)


def _names_own_trade(fill: _Fill, group: list[_Slice], profile_of_tag: Mapping[str, str]) -> bool:
    """The fill's client order id is the deterministic EXIT id of a trade with an open slice
    in `group`: proof on its own, a candidate whatever the leg's gap (one pointing to the other
    side is another slice's; a leg in sync may be so only because another unbooked fill offsets
    this one)."""
    parsed = parse_client_order_id(fill.client_order_id)
    if parsed is None or parsed.intent != "EXIT":
        return False
    profile = profile_of_tag.get(parsed.sub_tag)
    return any(s.key[0] == profile and s.key[1] == parsed.trade_id for s in group)


def _heuristic_match(fill: _Fill, group: list[_Slice], on_symbol: list[_Slice],
                     step: float) -> _Match:
    """The slice a heuristic would give an unattributed fill to (with the room left now)."""
    coid = fill.client_order_id or "none"
    if len(on_symbol) == 1 and on_symbol[0] in group:
        return _Match(SINGLE_OPEN_TRADE, on_symbol,
                      f"unattributed (client order id {coid}); {on_symbol[0].label} is the only "
                      f"open slice on {fill.symbol}", False)
    equal = [s for s in group if below_step(s.left - fill.qty, step)]
    if len(equal) == 1:
        return _Match(QTY_UNIQUE, equal,
                      f"unattributed (client order id {coid}); {equal[0].label} is the only open "
                      f"{fill.exits} slice on {fill.symbol} with the fill's qty {fill.qty:g} open",
                      False)
    return _Match(None, [], f"unattributed (client order id {coid}), and no heuristic singles out "
                            f"a slice: {len(group)} open {fill.exits} slice(s) on {fill.symbol}, "
                            f"{len(equal)} with the fill's qty {fill.qty:g} open", False)


def candidate_decision(method: str | None, assignable: bool, review: Review | None,
                       policy: BackfillPolicy, why: str, why_not: str = "") -> tuple[str, str]:
    """(GO or NO_GO, reason) of a candidate fill: the match `method` it found (None: it singles
    out no slice), whether the pair passed the gates, the operator's latest call on the pair, and
    the flags (the live backfill and the policy replay both decide through this function)."""
    if method is None:
        return NO_GO, why
    if not assignable:
        return NO_GO, f"{why}; but {why_not}"
    if review is not None and review.verdict == REJECT:
        return NO_GO, (f"rejected by an operator (review {review.review_id}"
                       + (f": {review.note}" if review.note else "") + ")")
    if method in STRONG_MATCH_METHODS:
        return GO, why
    if review is not None:  # an operator approved what a heuristic proposes
        return GO, f"{why}; approved by an operator (review {review.review_id})"
    if policy.heuristics_go:
        return GO, f"{why}; heuristic {method} allowed"
    return NO_GO, (f"{why}; heuristic {method} would match, held for an operator: "
                   f"{policy.heuristic_held_back_by()}")


def _decide(fill: _Fill, match: _Match, group: list[_Slice], room: dict, step: float,
            grace: pd.Timedelta, policy: BackfillPolicy, reviews: Mapping[PairKey, Review],
            cycle_id: str, account: str) -> dict:
    target, why_not = None, ""
    stale = 0  # targets the fill is older than: it cannot be their exit
    for s in match.targets:  # oldest slice of the trade first
        if s.opened_at is None:
            why_not = why_not or f"slice {s.label} has no opened time: the fill's age cannot be checked"
            continue
        if fill.filled_at is None or fill.filled_at < s.opened_at - grace:
            minutes = ((s.opened_at - fill.filled_at).total_seconds() / 60
                       if fill.filled_at is not None else float("nan"))
            why_not = why_not or (f"stale evidence: filled {minutes:.1f} min before slice {s.label} "
                                  f"opened, beyond the {policy.grace_minutes:g} min grace")
            stale += 1
            continue
        if not _fits(fill.qty, s.left, step):
            why_not = why_not or (f"the fill's qty {fill.qty:g} exceeds the {s.left:g} left open "
                                  f"on slice {s.label} (a fill is never split)")
            continue
        # The deterministic EXIT id of the slice's own trade is proof on its own: the slice's
        # open qty bounds it, not the net shortfall left, which other fills still waiting for an
        # operator (a foreign close) can shrink.
        if match.method != BY_CLIENT_ORDER_ID and not _fits(fill.qty, room.get(
                (fill.symbol, fill.exits), 0.0), step):
            why_not = why_not or (f"the fill's qty {fill.qty:g} exceeds the exchange's shortfall "
                                  f"of {room.get((fill.symbol, fill.exits), 0.0):g} left on "
                                  f"{fill.symbol} ({fill.exits})")
            continue
        target = s
        break
    shown = target or (match.targets[0] if match.targets else None)
    review = (reviews.get((fill.symbol, fill.fill_id, *shown.key)) if shown is not None else None)
    decision, reason = candidate_decision(match.method, target is not None, review, policy,
                                          match.why, why_not)
    if target is not None and not (review is not None and review.verdict == REJECT):
        # GO, or the match a heuristic would make: either way the room is spoken for, so what is
        # reported is one consistent assignment.
        target.left -= fill.qty
        room[(fill.symbol, fill.exits)] = room.get((fill.symbol, fill.exits), 0.0) - fill.qty
    return {
        "cycle_id": cycle_id, "exchange_account": account, "symbol": fill.symbol,
        "exchange_fill_id": fill.fill_id, "exchange_order_id": fill.order_id,
        "client_order_id": fill.client_order_id, "fill_side": fill.side, "fill_qty": fill.qty,
        "fill_price": fill.price, "fee_usd": fill.fee_usd, "filled_at": fill.filled_at,
        "profile_id": shown.key[0] if shown else None,
        "trade_id": shown.key[1] if shown else None,
        "slice_no": shown.key[2] if shown else None,
        "slice_side": fill.exits, "slice_open_qty": shown.open_qty if shown else None,
        "slice_opened_at": shown.opened_at if shown else None,
        "candidate_slices": [s.label for s in group], "match_mode": match.method,
        "strong": match.method in STRONG_MATCH_METHODS,
        # The pair passed the gates (grace, open qty, shortfall): an operator may approve it.
        "assignable": target is not None, "decision": decision, "reason": reason,
        "idempotency_key": exit_backfill_key(*shown.key, account, fill.symbol, fill.fill_id)
        if shown else None,
        # A NO_GO an operator may still turn (approve / reject): the fill may be the exit of the
        # slice it names, or of any of the candidates when it names none. Not so when the fill's
        # own id rules the slices out, it is older than the slices it could be for (stale), or
        # an operator rejected the pair.
        "awaiting_operator": decision == NO_GO and (match.method is not None or not match.strong)
        and not (review is not None and review.verdict == REJECT)
        and not (match.targets and stale == len(match.targets)),
        "candidate_keys": [[s.key[0], s.key[1], str(s.key[2])] for s in group
                           if fill.filled_at is None or s.opened_at is None
                           or fill.filled_at >= s.opened_at - grace],
    }
