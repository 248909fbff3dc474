"""The parity heartbeat (the runbook's "ghost self-healing"), as one pure function of a cycle's
snapshots and the streaks so far. No I/O, no Dagster: `defs/parity` fetches, calls, persists.

A **ghost** is a lifecycle slice that still has virtual open qty while the exchange does not hold
it. Per account and symbol, the exchange's signed net position E is compared with the signed sum
S of the open slices on it (long +, short -), with the market's quantity step as the tolerance:

- |E| below the step (the exchange is effectively flat): every open slice on the symbol is a
  ghost (each claims qty that is not there);
- |S - E| below the step: every slice is supported (`cleared`);
- otherwise a slice is singled out only when it alone explains the shortfall (|S - s - E| below
  the step for exactly that one slice s): it is the ghost and the others are supported. When no
  slice or several could, nothing is singled out: every slice on the symbol is `ambiguous`,
  reported and never closed (the diff's position drift shows the money).

The **streak** of a ghost counts consecutive cycles that saw it: it grows by one when the slice's
last sighting was the account's previous cycle (the run before this one, whatever its outcome),
and starts again at one otherwise, so a cycle that could not check (failed, stale) or saw the
slice supported breaks it. A ghost's decision, in order:

1. `backfill`: the EXIT backfill has a GO match (real fills) for it: evidence first;
2. `quarantine`: it is quarantined already (never closed automatically until released);
3. `confirming`: seen fewer than N (`RECON_POSITION_PARITY_CONFIRMATIONS`) consecutive cycles;
4. `quarantine`: confirmed, but not attributed to its profile (its own orders do not all carry
   the profile's sub tag, `core.attribution.slice_attribution`) while
   `RECON_POSITION_PARITY_REQUIRE_SUBTAG_ATTRIBUTION`; an operator's `approve_synthetic_exit`
   attributes it;
5. `blocked`: confirmed and attributed, but the integrity watchdog tripped for the profile this
   cycle, or dry run (`RECON_POSITION_PARITY_DRY_RUN`), or no mark price to close at;
6. `synthetic_exit`: close its whole open qty at the mark price of this cycle's snapshot.

Slices changed by the trading app a moment before the database read (the recency guard) are
`held`: not checked this cycle (their streak starts again). A slice that is not a ghost is
`cleared` (its streak ends, its quarantine is released).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from recon_assets.core.attribution import slice_attribution
from recon_assets.core.frames import finite, is_hedged, leg_of, with_position_legs
from recon_assets.core.rules import (AMBIGUOUS, BACKFILL, BLOCKED, CLEARED, CONFIRMING, FLAT, HELD,
                                     OPEN_SLICE_STATUS, QTY_ABS_TOL, QUARANTINE, STEP_SLACK,
                                     SYNTHETIC_EXIT)

SliceKey = tuple[str, str, int]  # (profile_id, trade_id, slice_no)

PARITY_CHECK_COLUMNS = (
    "cycle_id", "exchange_account", "profile_id", "trade_id", "slice_no", "symbol", "side",
    "virtual_open_qty", "exchange_qty", "slices_qty", "min_qty_step", "mark_price",
    "price_source", "mismatch_notional_usd", "attributable", "attribution", "ghost",
    "ghost_reason", "streak", "confirmations_required", "streak_started_cycle", "decision",
    "reason", "idempotency_key",
)


@dataclass(frozen=True)
class Streak:
    """A ghost's run of consecutive sightings, as recon.parity_confirmations keeps it."""

    count: int
    started_cycle: str
    last_cycle: str


@dataclass(frozen=True)
class ParityPolicy:
    """The runbook flags the heartbeat decides by."""

    confirmations: int
    require_attribution: bool
    dry_run: bool


def synthetic_exit_key(profile_id: str, trade_id: str, slice_no: int, streak_started: str) -> str:
    """The idempotency key of a slice's synthetic exit: the slice and its streak (the cycle it
    started in), so a re-run of any cycle of that streak finds the exit already applied."""
    payload = json.dumps(["recon-synthetic-exit/v1", profile_id, trade_id, int(slice_no),
                          streak_started], separators=(",", ":"))
    digest = hashlib.sha256(payload.encode()).hexdigest()[:32]
    return f"synthetic_exit:{profile_id}:{trade_id}:{slice_no}:{digest}"


def _signed(side: str, qty: float) -> float:
    return qty if side == "long" else -qty



def _below_step(qty: float, step: float) -> bool:
    """Less than one quantity step (a whole step is a real difference, as in the diff; the
    relative slack absorbs float noise such as 0.009 - 0.002 - 0.008)."""
    return abs(qty) < step * (1 - STEP_SLACK)


def _ghosts_of_symbol(signed: dict[SliceKey, float], exchange: float, step: float
                      ) -> tuple[set[SliceKey], set[SliceKey], str]:
    """(ghosts, ambiguous, why) for the open slices of one account and symbol."""
    total = sum(signed.values())
    if _below_step(exchange, step):
        return set(signed), set(), "the exchange is effectively flat on the symbol"
    if _below_step(total - exchange, step):
        return set(), set(), ""
    explains = [k for k, qty in signed.items() if _below_step(total - qty - exchange, step)]
    if len(explains) == 1:
        return {explains[0]}, set(), ("its qty is the exchange's shortfall on the symbol, which no "
                                      "other slice explains")
    return set(), set(signed), (
        f"the exchange holds {exchange:g} against {total:g} claimed, and "
        + ("no single slice" if not explains else f"{len(explains)} slices equally")
        + " explain(s) the difference")


def parity_checks(*, cycle_id: str, account: str, previous_cycle_id: str | None,
                  slices: pd.DataFrame, profiles: pd.DataFrame,
                  exchange_positions: pd.DataFrame, streaks: Mapping[SliceKey, Streak],
                  policy: ParityPolicy, quarantined: frozenset[SliceKey] = frozenset(),
                  approved: frozenset[SliceKey] = frozenset(),
                  backfill_go: frozenset[SliceKey] = frozenset(),
                  watchdog_tripped: Mapping[str, str] | None = None,
                  db_read_at: pd.Timestamp | None = None,
                  recency_guard_s: float = 0.0) -> pd.DataFrame:
    """One check per open slice (with virtual open qty) of `account`: columns
    `PARITY_CHECK_COLUMNS`, ordered by symbol, profile, trade and slice. See the module docstring
    for the rules. `slices`: DB_TRADE_SLICES rows; `profiles`: DB_PROFILES (sub tags);
    `exchange_positions`: EXCHANGE_POSITIONS of this cycle; `streaks`: the recorded streaks;
    `quarantined`: slices with an open quarantine; `approved`: slices an operator approved for
    a synthetic exit; `backfill_go`: slices the EXIT backfill has GO matches for;
    `watchdog_tripped`: profile -> why, for profiles the integrity watchdog paused this cycle;
    slices updated after `db_read_at - recency_guard_s` are held back (the recency guard)."""
    tripped = dict(watchdog_tripped or {})
    tags = dict(zip(profiles["profile_id"], profiles["sub_tag"]))
    open_slices = slices[(slices["status"] == OPEN_SLICE_STATUS) & (slices["virtual_open_qty"] > 0)]
    recent: set[SliceKey] = set()
    if db_read_at is not None and len(open_slices):
        cutoff = pd.Timestamp(db_read_at) - pd.Timedelta(seconds=float(recency_guard_s))
        changed = pd.to_datetime(open_slices["updated_at"], utc=True) > cutoff
        recent = {(r.profile_id, r.trade_id, int(r.slice_no))
                  for r in open_slices[changed.fillna(False).to_numpy()].itertuples()}
    # One-way: the slices of a symbol against its net position; hedge mode: against their leg.
    hedged = is_hedged(exchange_positions)
    positions = {(row.symbol, row.position_side): row
                 for row in with_position_legs(exchange_positions).itertuples()}
    legs = open_slices.assign(_leg=[leg_of(hedged, side) for side in open_slices["side"]])
    rows: list[dict] = []
    for (symbol, leg), group in legs.groupby(["symbol", "_leg"], sort=True):
        keyed = {(r.profile_id, r.trade_id, int(r.slice_no)): r for r in group.itertuples()}
        signed = {k: _signed(r.side, float(r.virtual_open_qty)) for k, r in keyed.items()}
        position = positions.get((symbol, leg))
        if position is None:
            exchange, step, mark = None, None, None
            ghosts, ambiguous, why = set(), set(), ""
        else:
            exchange = 0.0 if position.side == FLAT else _signed(position.side, float(position.qty))
            step = finite(position.min_qty_step) or QTY_ABS_TOL
            mark = finite(position.mark_price)
            ghosts, ambiguous, why = _ghosts_of_symbol(signed, exchange, step)
        for key in sorted(keyed):
            r = keyed[key]
            attributed, attribution = slice_attribution(tags.get(r.profile_id), r.trade_id,
                                                        r.order_client_ids)
            if key in approved and not attributed:
                attributed, attribution = True, "an operator approved its synthetic exit"
            entry = finite(r.entry_price)
            price, source = (mark, "mark_price") if mark else (entry, "entry_price") if entry \
                else (None, None)
            ghost = key in ghosts and key not in recent and position is not None
            streak, started = (next_streak(streaks.get(key), previous_cycle_id, cycle_id)
                               if ghost else (0, None))
            decision, reason = slice_decision(key, r.profile_id, ghost, streak, attributed, mark,
                                              position is None, key in recent, key in ambiguous,
                                              why, policy, quarantined, backfill_go, tripped)
            rows.append({
                "cycle_id": cycle_id, "exchange_account": account, "profile_id": r.profile_id,
                "trade_id": r.trade_id, "slice_no": key[2], "symbol": symbol, "side": r.side,
                "virtual_open_qty": float(r.virtual_open_qty), "exchange_qty": exchange,
                "slices_qty": sum(signed.values()), "min_qty_step": step, "mark_price": mark,
                "price_source": source,
                "mismatch_notional_usd": float(r.virtual_open_qty) * price if ghost and price else 0.0,
                "attributable": attributed, "attribution": attribution, "ghost": ghost,
                "ghost_reason": why if ghost else None, "streak": streak,
                "confirmations_required": policy.confirmations, "streak_started_cycle": started,
                "decision": decision, "reason": reason,
                "idempotency_key": synthetic_exit_key(*key, started)
                if decision == SYNTHETIC_EXIT else None,
            })
    return pd.DataFrame(rows, columns=list(PARITY_CHECK_COLUMNS))


def next_streak(previous: Streak | None, previous_cycle_id: str | None,
                cycle_id: str) -> tuple[int, str]:
    """(count, started cycle) of a ghost seen in `cycle_id`: one more than its streak when that
    was last seen in the account's previous cycle, else a new streak starting here."""
    if previous is not None and previous_cycle_id is not None \
            and previous.last_cycle == previous_cycle_id:
        return previous.count + 1, previous.started_cycle
    return 1, cycle_id


def slice_decision(key: SliceKey, profile_id: str, ghost: bool, streak: int, attributed: bool,
                   mark: float | None, unchecked: bool, recent: bool, ambiguous: bool, why: str,
                   policy: ParityPolicy, quarantined: frozenset, backfill_go: frozenset,
                   tripped: Mapping[str, str]) -> tuple[str, str]:
    """(decision, reason) of one open slice, by the rules of the module docstring (the live
    heartbeat and the policy replay both decide through this function)."""
    n = policy.confirmations
    if unchecked:
        return HELD, "the exchange snapshot has no row for the symbol: not checked this cycle"
    if recent:
        return HELD, "changed a moment before the database was read: checked next cycle"
    if ambiguous:
        return AMBIGUOUS, f"not singled out: {why}; reported, never closed automatically"
    if not ghost:
        return CLEARED, "the exchange supports the slice"
    if key in backfill_go:
        return BACKFILL, "the EXIT backfill has the real exit fills for it: evidence first"
    if key in quarantined:
        return QUARANTINE, "quarantined: never closed automatically until an operator releases it"
    if streak < n:
        return CONFIRMING, f"ghost seen {streak} of {n} consecutive cycles"
    if policy.require_attribution and not attributed:
        return QUARANTINE, (f"confirmed {streak} of {n}, but not attributable to profile "
                            f"{profile_id} by its orders' sub tag")
    if profile_id in tripped:
        return BLOCKED, f"confirmed, but the integrity watchdog tripped: {tripped[profile_id]}"
    if policy.dry_run:
        return BLOCKED, "confirmed: dry run records the synthetic exit it would apply"
    if not mark:
        return BLOCKED, "confirmed, but the snapshot has no mark price to close it at"
    return SYNTHETIC_EXIT, f"confirmed {streak} of {n} consecutive cycles and attributed"
