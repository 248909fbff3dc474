"""The parity heartbeat (the runbook's "ghost self-healing"), as one pure function of a cycle's
snapshots, the evidence waiting to be booked and the streaks so far. No I/O, no Dagster:
`defs/parity` fetches, calls, persists.

A **ghost** is a lifecycle slice that still has virtual open qty while the exchange does not hold
it. Whether a slice is one is decided on the whole book of its leg by `core.book.judge_leg` (the
rule the diff and the EXIT backfill share): per account, symbol and leg (the net position in
one-way mode, each leg in hedge mode) the signed sum of the open slices against the exchange's
signed position, with the market's quantity step as the tolerance:

- the book nets (the slices add up to the exchange's position, whatever it is): every slice is
  supported (`cleared`);
- the exchange is flat on the leg while the slices claim a position: every slice of the leg is a
  ghost;
- the exchange holds part of the claim: the gap, less what real evidence waiting to be booked
  explains (`core.evidence`: exit fills of the database's EXIT orders, the backfill's GO fills),
  is either explained (no ghost; the slices the evidence is for are `backfill` when it is their
  GO fill, otherwise `held`) or not, and then no
  slice is singled out, not even one whose size matches the gap: every slice of the leg is
  `ambiguous`, reported and never closed (the diff's position drift shows the money).

The **streak** of a ghost counts consecutive cycles that saw it: it grows by one when the slice's
last sighting was the account's previous cycle (whatever that cycle's outcome), stays as it is
when the sighting was this very cycle (a retried cycle counts once), and starts again at one
otherwise, so a cycle that could not check (failed, stale), saw the slice supported or held it
breaks it. A ghost's decision, in order:

1. `backfill`: the EXIT backfill has a GO match (real fills) for it: evidence first;
2. `held`: real evidence waits for its trade (`core.evidence`: an EXIT order open in the
   database, a fill of its orders not booked, a lifecycle correction refused and not resolved,
   a backfill candidate awaiting an operator, an exit-side fill newer than the read), or the
   account is **systemic**: the exchange reports flat for new ghosts (not seen the cycle
   before, not quarantined) of several profiles (`rules.SYSTEMIC_MIN_PROFILES`) of the account
   at once with no real fill explaining them.
   A systemic account's profiles are all paused by the integrity watchdog and nothing is
   closed until the exchange and the slices agree again. A held slice's streak starts again;
3. `quarantine`: it is quarantined already (never closed automatically until released);
4. `confirming`: seen fewer than N (`RECON_POSITION_PARITY_CONFIRMATIONS`) consecutive cycles;
5. `quarantine`: confirmed, but not attributed to its profile (its own orders do not all carry
   the profile's sub tag, `core.attribution.slice_attribution`) while
   `RECON_POSITION_PARITY_REQUIRE_SUBTAG_ATTRIBUTION`; an operator's `approve_synthetic_exit`
   attributes it for the ghost episode (the streak) it was given for, not for a later one;
6. `blocked`: confirmed and attributed, but the integrity watchdog tripped for the profile this
   cycle, or dry run (`RECON_POSITION_PARITY_DRY_RUN`), or no mark price to close at;
7. `synthetic_exit`: close its whole open qty at the mark price of this cycle's snapshot.

Slices changed by the trading app a moment before the database read (the recency guard) are
`held`: not checked this cycle (their streak starts again). A slice that is not a ghost is
`cleared` (its streak ends), but a quarantined one stays `quarantine` until the exchange has
supported it for N consecutive cycles (`clear_streak`); then it is `cleared` and the quarantine
released.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from recon_assets.core.attribution import slice_attribution
from recon_assets.core.book import (EXPLAINED, FLAT_GHOSTS, UNCHECKED, UNEXPLAINED_GAP, judge_leg,
                                    signed)
from recon_assets.core.evidence import Evidence
from recon_assets.core.frames import finite, is_hedged, leg_of, with_position_legs
from recon_assets.core.rules import (AMBIGUOUS, BACKFILL, BLOCKED, CLEARED, CONFIRMING, FLAT, HELD,
                                     OPEN_SLICE_STATUS, POSITION_SIDES, QUARANTINE,
                                     SYNTHETIC_EXIT, SYSTEMIC_MIN_PROFILES)

SliceKey = tuple[str, str, int]  # (profile_id, trade_id, slice_no)

PARITY_CHECK_COLUMNS = (
    "cycle_id", "exchange_account", "profile_id", "trade_id", "slice_no", "symbol", "side",
    "virtual_open_qty", "exchange_qty", "slices_qty", "min_qty_step", "mark_price",
    "price_source", "mismatch_notional_usd", "attributable", "attribution", "ghost",
    "ghost_reason", "streak", "confirmations_required", "streak_started_cycle", "decision",
    "reason", "idempotency_key", "hold_reason", "clear_streak", "clear_started_cycle",
)


@dataclass(frozen=True)
class Streak:
    """A run of consecutive sightings (a ghost's, as recon.parity_confirmations keeps it; or a
    quarantined slice's run of cycles the exchange supported it)."""

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


def systemic_reason(account: str, profiles: set[str]) -> str | None:
    """Why the account is judged systemic (None: it is not): new ghosts that no real fill
    explains belong to at least `SYSTEMIC_MIN_PROFILES` of its profiles at once."""
    if len(profiles) < SYSTEMIC_MIN_PROFILES:
        return None
    return (f"systemic: the exchange reports flat for open slices of {len(profiles)} profiles "
            f"({', '.join(sorted(profiles))}) of {account} at once and no real fill explains "
            "them: every profile of the account is paused, nothing is closed until the "
            "exchange and the slices agree again")


def parity_checks(*, cycle_id: str, account: str, previous_cycle_id: str | None,
                  slices: pd.DataFrame, profiles: pd.DataFrame,
                  exchange_positions: pd.DataFrame, streaks: Mapping[SliceKey, Streak],
                  policy: ParityPolicy, quarantined: frozenset[SliceKey] = frozenset(),
                  clear_streaks: Mapping[SliceKey, Streak] | None = None,
                  approved: Mapping[SliceKey, frozenset[str]] | None = None,
                  backfill_go: frozenset[SliceKey] = frozenset(),
                  evidence: Evidence | None = None,
                  watchdog_tripped: Mapping[str, str] | None = None,
                  db_read_at: pd.Timestamp | None = None,
                  recency_guard_s: float = 0.0) -> pd.DataFrame:
    """One check per open slice (with virtual open qty) of `account`: columns
    `PARITY_CHECK_COLUMNS`, ordered by symbol, profile, trade and slice. See the module docstring
    for the rules. `slices`: DB_TRADE_SLICES rows; `profiles`: DB_PROFILES (sub tags);
    `exchange_positions`: EXCHANGE_POSITIONS of this cycle; `streaks`: the recorded streaks;
    `quarantined`: slices with an open quarantine, `clear_streaks` their runs of supported
    cycles; `approved`: slice -> the ghost episodes (streak start cycles) an operator approved a
    synthetic exit for; `backfill_go`: slices the EXIT backfill has GO matches for; `evidence`:
    the real evidence waiting to be booked (`core.evidence.pending_evidence`);
    `watchdog_tripped`: profile -> why, for profiles the integrity watchdog paused this cycle;
    slices updated after `db_read_at - recency_guard_s` are held back (the recency guard).
    `result.attrs["systemic"]`: why the account is systemic, or None."""
    tripped = dict(watchdog_tripped or {})
    evidence = evidence or Evidence()
    approved = approved or {}
    clear_streaks = clear_streaks or {}
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
    judged = []  # (symbol, leg, keyed rows, signed, position, verdict, step, mark)
    for (symbol, leg), group in legs.groupby(["symbol", "_leg"], sort=True):
        keyed = {(r.profile_id, r.trade_id, int(r.slice_no)): r for r in group.itertuples()}
        qty = {k: signed(r.side, float(r.virtual_open_qty)) for k, r in keyed.items()}
        position = positions.get((symbol, leg))
        step = mark = exchange = None
        if position is not None:
            exchange = 0.0 if position.side == FLAT else signed(position.side, float(position.qty))
            step, mark = finite(position.min_qty_step), finite(position.mark_price)
        where = f"{symbol} ({leg} leg)" if leg in POSITION_SIDES else symbol
        verdict = judge_leg(qty, exchange, step, evidence.explained.get((symbol, leg), 0.0),
                            where)
        judged.append((symbol, keyed, qty, verdict, step, mark))
    # Systemic: new ghosts (not seen last cycle, not quarantined) no real evidence explains, of
    # several profiles at once: a flat answer, not a known ghost awaiting its confirmations.
    def new_and_unexplained(k: SliceKey) -> bool:
        seen = streaks.get(k)
        return (k not in recent and k not in backfill_go and k not in quarantined
                and not evidence.hold_reason(k)
                and not (seen is not None and seen.last_cycle in (previous_cycle_id, cycle_id)))

    unexplained = {k[0] for _s, _k, _q, verdict, _st, _m in judged for k in verdict.ghosts
                   if new_and_unexplained(k)}
    systemic = systemic_reason(account, unexplained)
    rows: list[dict] = []
    for symbol, keyed, qty, verdict, step, mark in judged:
        for key in sorted(keyed):
            r = keyed[key]
            ghost = key in verdict.ghosts and key not in recent
            hold = evidence.hold_reason(key) if ghost or verdict.state == EXPLAINED else None
            if ghost and systemic and key not in backfill_go:
                hold = systemic + (f"; {hold}" if hold else "")
            entry = finite(r.entry_price)
            price, source = (mark, "mark_price") if mark else (entry, "entry_price") if entry \
                else (None, None)
            counted = ghost and not (hold and key not in backfill_go)
            streak, started = (next_streak(streaks.get(key), previous_cycle_id, cycle_id)
                               if counted else (0, None))
            attributed, attribution = slice_attribution(tags.get(r.profile_id), r.trade_id,
                                                        r.order_client_ids)
            if not attributed and started is not None and started in approved.get(key, ()):
                attributed, attribution = True, ("an operator approved its synthetic exit for "
                                                 f"this ghost episode (since {started})")
            cleared = (key in quarantined and not ghost and key not in recent
                       and verdict.state not in (UNCHECKED, UNEXPLAINED_GAP) and not hold)
            clear, clear_started = (next_streak(clear_streaks.get(key), previous_cycle_id,
                                                cycle_id) if cleared else (0, None))
            decision, reason = slice_decision(
                key, r.profile_id, ghost=ghost, streak=streak, attributed=attributed, mark=mark,
                unchecked=verdict.state == UNCHECKED, recent=key in recent,
                ambiguous=key in verdict.ambiguous, why=verdict.why, hold=hold,
                quarantined=key in quarantined, clear_streak=clear,
                backfill_go=key in backfill_go, tripped=tripped.get(r.profile_id),
                policy=policy)
            rows.append({
                "cycle_id": cycle_id, "exchange_account": account, "profile_id": r.profile_id,
                "trade_id": r.trade_id, "slice_no": key[2], "symbol": symbol, "side": r.side,
                "virtual_open_qty": float(r.virtual_open_qty), "exchange_qty": verdict.exchange,
                "slices_qty": verdict.claimed, "min_qty_step": step, "mark_price": mark,
                "price_source": source,
                # At risk: a ghost, or a slice of a gap nothing explains (it could all be gone).
                "mismatch_notional_usd": float(r.virtual_open_qty) * price
                if (ghost or key in verdict.ambiguous) and price else 0.0,
                "attributable": attributed, "attribution": attribution, "ghost": ghost,
                "ghost_reason": verdict.why if ghost else None, "streak": streak,
                "confirmations_required": policy.confirmations, "streak_started_cycle": started,
                "decision": decision, "reason": reason,
                "idempotency_key": synthetic_exit_key(*key, started)
                if decision == SYNTHETIC_EXIT else None,
                "hold_reason": hold, "clear_streak": clear, "clear_started_cycle": clear_started,
            })
    result = pd.DataFrame(rows, columns=list(PARITY_CHECK_COLUMNS))
    result.attrs["systemic"] = systemic
    return result


def next_streak(previous: Streak | None, previous_cycle_id: str | None,
                cycle_id: str) -> tuple[int, str]:
    """(count, started cycle) of a sighting in `cycle_id`: one more than its streak when that
    was last seen in the account's previous cycle, the same when it was last seen in this very
    cycle (a retried cycle's look counts once), else a new streak starting here."""
    if previous is not None and previous.last_cycle == cycle_id:
        return previous.count, previous.started_cycle
    if previous is not None and previous_cycle_id is not None \
            and previous.last_cycle == previous_cycle_id:
        return previous.count + 1, previous.started_cycle
    return 1, cycle_id


def slice_decision(key: SliceKey, profile_id: str, *, ghost: bool, streak: int, attributed: bool,
                   mark: float | None, policy: ParityPolicy, unchecked: bool = False,
                   recent: bool = False, ambiguous: bool = False, why: str = "",
                   hold: str | None = None, quarantined: bool = False, clear_streak: int = 0,
                   backfill_go: bool = False, tripped: str | None = None) -> tuple[str, str]:
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
        if backfill_go:  # the GO fill is what explains the gap: it is booked first
            return BACKFILL, "the EXIT backfill has the real exit fills for it: evidence first"
        if hold:
            return HELD, f"waiting for its real evidence: {hold}"
        if quarantined and clear_streak < n:
            return QUARANTINE, (f"the exchange supports it now ({clear_streak} of {n} consecutive "
                                "cycles): the quarantine holds until it has for "
                                f"{n}")
        if quarantined:
            return CLEARED, (f"the exchange supported it {clear_streak} of {n} consecutive "
                             "cycles: the quarantine is released")
        return CLEARED, "the exchange supports the slice"
    if backfill_go:
        return BACKFILL, "the EXIT backfill has the real exit fills for it: evidence first"
    if hold:
        return HELD, f"no synthetic exit while {hold}"
    if quarantined:
        return QUARANTINE, "quarantined: never closed automatically until an operator releases it"
    if streak < n:
        return CONFIRMING, f"ghost seen {streak} of {n} consecutive cycles"
    if policy.require_attribution and not attributed:
        return QUARANTINE, (f"confirmed {streak} of {n}, but not attributable to profile "
                            f"{profile_id} by its orders' sub tag")
    if tripped:
        return BLOCKED, f"confirmed, but the integrity watchdog tripped: {tripped}"
    if policy.dry_run:
        return BLOCKED, "confirmed: dry run records the synthetic exit it would apply"
    if not mark:
        return BLOCKED, "confirmed, but the snapshot has no mark price to close it at"
    return SYNTHETIC_EXIT, f"confirmed {streak} of {n} consecutive cycles and attributed"
