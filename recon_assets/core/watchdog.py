"""The integrity watchdog and the auto-resume rule, as pure functions. No I/O, no Dagster, no
clock: `now` is always passed in. `defs/parity` fetches, calls, persists.

**The watchdog** (runbook: "pause when cumulative mismatch notional exceeds
RECON_POSITION_PARITY_MAX_NOTIONAL_PCT of allocated capital"), per profile and cycle. It sees
everything (safety rule 15): a profile's mismatch notional is the sum, over this cycle's
findings, of what could be its money:

- **ghosts**: the heartbeat's ghost slices of the profile (`mismatch_notional_usd` of its
  checks with `ghost`, held ones included), and its `ambiguous` slices (a gap on their leg that
  nothing explains: netted with other profiles' slices, any of it could be gone, so each is
  charged whole); while the heartbeat is off, the diff's `ghost_slice` rows instead;
- **orders**: the diff's order findings with the profile's id (`rules.ORDER_DRIFT_KINDS`:
  missing from the exchange, attributed orders missing in the database, status, qty and price
  drift), each its `notional_usd` (the diff prices an order with no price, a market order, at
  the mark), and its own fills (its sub tag) of orders the database never recorded, not booked
  (`unrecorded_fills_usd`: a lost order no finding shows, `core.evidence`);
- **positions**: an account-level `position_drift` (per symbol in one-way mode, per symbol and
  leg in hedge mode) is first reduced by the ghosts found on the same symbol and leg (they
  explain that much of it; one leg's ghosts never offset another leg's drift). What is left is
  charged, all of it, to each profile the evidence points at: those with an order finding on
  the symbol and leg, or a fill of their own (their sub tag) not booked yet there
  (`core.evidence.Evidence.fill_profiles`), whether or not they hold a database position. When
  the drift shrinks the position (the exchange holds less than the database), every other
  profile holding a database position there is charged too, each at most its own position (any
  of them could be the one that drifted). A drift that grows the position with no evidence
  pointing at anyone is charged to no one and is returned as **uncharged**
  (`uncharged_drift`): an account-level alert every cycle it persists, and `/internal/health`.

A finding can be charged twice when two findings describe one event (an entry filled behind the
database is both an order missing from the exchange and a position drift); the watchdog errs
towards pausing. Foreign orders (findings with no profile) are charged to no one.

A **systemic** account (`core.parity.systemic_reason`: the exchange flat for ghosts of several
profiles at once, no real fill explaining them) trips every profile of the account, whatever
the notional, with that reason: pause, never mass-close.

The threshold is `capital x pct / 100` (0.5 means 0.5 %); the watchdog **trips** when the
notional exceeds it (strictly). A profile's cycle is **clean** when nothing at all was charged
to it or seen about it (no finding, every heartbeat check of its slices `cleared`) and it was
fully checked: a finding about it that the recency guard held back this cycle
(`not_fully_checked`, from the diff's `attrs["not_fully_checked"]`) leaves the cycle not clean.

**Auto-resume** (`auto_resume_decision`): a paused profile is resumed exactly when all hold:
`ENABLE_RECON_WATCHDOG_AUTO_RESUME`; the pause source is the parity watchdog (an operator's or
any other pause never); the pause is at least `..._MIN_PAUSE_MS` old; the last
`..._CLEAN_CYCLES` cycles of the profile's account that started after the pause were all clean
for the profile (a failed cycle is not clean, so it breaks the streak); and at least
`..._COOLDOWN_MS` passed since the profile's previous auto-resume.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd

from recon_assets.core.evidence import order_leg
from recon_assets.core.rules import (AMBIGUOUS, CLEARED, CYCLE_SUCCEEDED, GHOST_SLICE, MISSING_IN_DB,
                                     ONE_WAY, ORDER_DRIFT_KINDS, PAUSED, POSITION_DRIFT,
                                     POSITION_SIDES, WATCHDOG_PAUSE_SOURCE)

VERDICT_COLUMNS = (
    "profile_id", "exchange_account", "allocated_capital_usd", "ghost_notional_usd",
    "order_notional_usd", "position_notional_usd", "mismatch_notional_usd", "threshold_pct",
    "threshold_usd", "findings", "tripped", "clean", "reason", "not_fully_checked",
    "evidence_legs", "systemic", "unrecorded_fills_usd",
)
UNCHARGED_COLUMNS = ("exchange_account", "symbol", "position_side", "difference",
                     "notional_usd", "reason")


def _number(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _details(value) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value:
        return json.loads(value)
    return {}


def threshold_usd(capital_usd: float, pct: float) -> float:
    """The watchdog's threshold for a profile: `pct` percent of its allocated capital."""
    return capital_usd * pct / 100.0


def watchdog_verdicts(*, account: str, profiles: pd.DataFrame, mismatches: pd.DataFrame,
                      checks: pd.DataFrame, max_notional_pct: float,
                      heartbeat_checked: bool = True,
                      fill_profiles: Mapping[tuple[str, str], set[str]] | None = None,
                      not_fully_checked: Mapping[str, str] | None = None,
                      systemic: str | None = None,
                      unrecorded_fills: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One verdict per profile of `account` (columns `VERDICT_COLUMNS`, by profile id): what was
    charged to it (see the module docstring), the threshold, `tripped` and `clean`;
    `result.attrs["uncharged"]`: the position drift charged to no one (`UNCHARGED_COLUMNS`).

    `profiles`: DB_PROFILES rows (those of other accounts are ignored); `mismatches`: this
    cycle's diff rows (MISMATCH_COLUMNS, `details` as a dict or JSON text); `checks`: this
    cycle's heartbeat checks (PARITY_CHECK_COLUMNS); `heartbeat_checked`: false when the
    heartbeat is off (the diff's ghost rows are charged instead); `fill_profiles`: (symbol, leg)
    -> profiles whose own fills, not booked yet, are there; `not_fully_checked`: profile -> why
    a finding about it was held back this cycle; `systemic`: why the account is systemic;
    `unrecorded_fills`: profile -> USD of its own unbooked fills of orders the database never
    recorded."""
    rows = verdict_records(account=account, profiles=profiles.to_dict("records"),
                           mismatches=mismatches.to_dict("records"),
                           checks=checks.to_dict("records"), max_notional_pct=max_notional_pct,
                           heartbeat_checked=heartbeat_checked, fill_profiles=fill_profiles,
                           not_fully_checked=not_fully_checked, systemic=systemic,
                           unrecorded_fills=unrecorded_fills)
    frame = pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))
    frame.attrs["uncharged"] = uncharged_drift(
        account=account, mismatches=mismatches.to_dict("records"),
        checks=checks.to_dict("records"), heartbeat_checked=heartbeat_checked,
        fill_profiles=fill_profiles)
    return frame


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _finding_leg(details: Mapping, hedged: bool) -> str:
    """The leg an order finding moves (`core.evidence.order_leg`)."""
    side = details.get("side") or details.get("db_side") or details.get("exchange_side")
    return order_leg(details.get("intent"), side, hedged)


def _ghost_legs(checks: Iterable[Mapping], mismatches: Iterable[Mapping],
                heartbeat_checked: bool) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Ghost notional per profile, and per (symbol, slice side)."""
    by_profile: dict[str, float] = {}
    by_leg: dict[tuple[str, str], float] = {}
    rows = ([(r["profile_id"], r["symbol"], r["side"], r["mismatch_notional_usd"])
             for r in checks if r["ghost"] or r["decision"] == AMBIGUOUS]
            if heartbeat_checked else
            [(r["profile_id"], r["symbol"], _details(r.get("details")).get("side"),
              r["notional_usd"]) for r in mismatches
             if r["kind"] == GHOST_SLICE and _text(r.get("profile_id"))])
    for profile, symbol, side, notional in rows:
        by_profile[profile] = by_profile.get(profile, 0.0) + _number(notional)
        by_leg[(symbol, side)] = by_leg.get((symbol, side), 0.0) + _number(notional)
    return by_profile, by_leg


def _position_charges(mismatches: list[Mapping], checks: list[Mapping], heartbeat_checked: bool,
                      fill_profiles: Mapping[tuple[str, str], set[str]] | None
                      ) -> tuple[dict[str, float], dict[str, int], list[dict]]:
    """(position notional per profile, findings seen per profile, uncharged drifts)."""
    _ghosts, ghost_legs = _ghost_legs(checks, mismatches, heartbeat_checked)
    fill_profiles = fill_profiles or {}
    pointed: dict[tuple[str, str], set[str]] = {}  # (symbol, leg) -> profiles the evidence names
    legs_of_symbol: dict[str, set[str]] = {}
    for row in mismatches:
        if row["kind"] == POSITION_DRIFT:
            legs_of_symbol.setdefault(row["symbol"], set()).add(
                _details(row.get("details")).get("position_side") or ONE_WAY)
    for row in mismatches:
        profile = _text(row.get("profile_id"))
        if profile and row["kind"] in ORDER_DRIFT_KINDS:
            legs = legs_of_symbol.get(row["symbol"], {ONE_WAY})
            hedged = bool(legs & set(POSITION_SIDES))
            leg = _finding_leg(_details(row.get("details")), hedged)
            pointed.setdefault((row["symbol"], leg), set()).add(profile)
    charges: dict[str, float] = {}
    seen: dict[str, int] = {}
    uncharged: list[dict] = []
    for row in mismatches:
        if row["kind"] != POSITION_DRIFT:
            continue
        details = _details(row.get("details"))
        leg = details.get("position_side") or ONE_WAY
        symbol = row["symbol"]
        drift = _number(row["notional_usd"])
        difference = _number(details.get("difference"))
        price = drift / abs(difference) if difference else 0.0
        ghost = sum(v for (s, side), v in ghost_legs.items()
                    if s == symbol and (leg == ONE_WAY or side == leg))
        left = max(0.0, drift - ghost)
        # The nets (the recorded findings keep them in the details: the parts and the difference).
        db_net = sum(_number(part.get("net_qty")) for part in details.get("profiles") or [])
        ex_net = db_net - difference
        grows = abs(ex_net) > abs(db_net) or ex_net * db_net < 0  # more, or the other way
        held = {part.get("profile_id"): abs(_number(part.get("net_qty")))
                for part in details.get("profiles") or [] if part.get("profile_id")}
        evidence = pointed.get((symbol, leg), set()) | set(fill_profiles.get((symbol, leg), ()))
        shares = {owner: left for owner in evidence}  # the evidence's profiles: all of it
        if not grows:  # a shrink: any holder could be the one that drifted, up to its position
            for owner, qty in held.items():
                if qty and owner not in shares:
                    shares[owner] = min(left, qty * price)
        for owner in sorted(set(shares) | set(held)):
            seen[owner] = seen.get(owner, 0) + 1  # seen, even when not charged
        for owner, share in sorted(shares.items()):
            charges[owner] = charges.get(owner, 0.0) + share
        if not shares and left > 0:
            uncharged.append({
                "exchange_account": row.get("exchange_account"), "symbol": symbol,
                "position_side": leg, "difference": difference, "notional_usd": left,
                "reason": (f"the exchange holds {ex_net:g} on {symbol}"
                           + (f" ({leg} leg)" if leg != ONE_WAY else "")
                           + f" against the database's {db_net:g}, and no "
                             "order, fill or database position points at a profile: charged "
                             "to no one")})
    return charges, seen, uncharged


def uncharged_drift(*, account: str, mismatches: Iterable[Mapping], checks: Iterable[Mapping],
                    heartbeat_checked: bool = True,
                    fill_profiles: Mapping[tuple[str, str], set[str]] | None = None) -> list[dict]:
    """The position drift of `account` no profile can be charged with (`UNCHARGED_COLUMNS`)."""
    rows = [{**r, "exchange_account": r.get("exchange_account") or account} for r in mismatches]
    return _position_charges(rows, list(checks), heartbeat_checked, fill_profiles)[2]


def verdict_records(*, account: str, profiles: Iterable[Mapping], mismatches: Iterable[Mapping],
                    checks: Iterable[Mapping], max_notional_pct: float,
                    heartbeat_checked: bool = True,
                    fill_profiles: Mapping[tuple[str, str], set[str]] | None = None,
                    not_fully_checked: Mapping[str, str] | None = None,
                    systemic: str | None = None,
                    unrecorded_fills: Mapping[str, float] | None = None) -> list[dict]:
    """`watchdog_verdicts` on plain records (dicts with the same columns), for callers that
    decide many cycles (the policy replay): the rule itself."""
    mismatches, checks = list(mismatches), list(checks)
    not_fully_checked = not_fully_checked or {}
    ghosts, _legs = _ghost_legs(checks, mismatches, heartbeat_checked)
    seen: dict[str, int] = {}
    if heartbeat_checked:
        for row in checks:
            if row["decision"] != CLEARED:
                seen[row["profile_id"]] = seen.get(row["profile_id"], 0) + 1
    orders: dict[str, float] = {}
    for row in mismatches:
        kind, profile = row["kind"], _text(row.get("profile_id"))
        if kind in ORDER_DRIFT_KINDS and profile:
            orders[profile] = orders.get(profile, 0.0) + _number(row["notional_usd"])
            seen[profile] = seen.get(profile, 0) + 1
        elif kind == GHOST_SLICE and profile and not heartbeat_checked:
            seen[profile] = seen.get(profile, 0) + 1
    for profile, usd in (unrecorded_fills or {}).items():
        if _number(usd) > 0:
            orders[profile] = orders.get(profile, 0.0) + _number(usd)
            seen[profile] = seen.get(profile, 0) + 1
    positions, position_seen, _uncharged = _position_charges(mismatches, checks,
                                                             heartbeat_checked, fill_profiles)
    for owner, n in position_seen.items():
        seen[owner] = seen.get(owner, 0) + n
    legs_of: dict[str, list[str]] = {}
    for (symbol, leg), owners in (fill_profiles or {}).items():
        for owner in owners:
            legs_of.setdefault(owner, []).append(f"{symbol}|{leg}")
    rows = []
    for profile in sorted((p for p in profiles if p["exchange_account"] == account),
                          key=lambda p: p["profile_id"]):
        pid = profile["profile_id"]
        capital = _number(profile["allocated_capital_usd"])
        limit = threshold_usd(capital, max_notional_pct)
        parts = (ghosts.get(pid, 0.0), orders.get(pid, 0.0), positions.get(pid, 0.0))
        total = sum(parts)
        tripped = total > limit or bool(systemic)
        unchecked = not_fully_checked.get(pid)
        reason = (f"mismatch notional {total:.2f} USD (ghosts {parts[0]:.2f}, orders "
                  f"{parts[1]:.2f}, positions {parts[2]:.2f}) "
                  + ("exceeds" if total > limit else "is within")
                  + f" {max_notional_pct:g} % of allocated capital {capital:.2f} USD "
                    f"({limit:.2f} USD)")
        if systemic:
            reason = f"{systemic}; {reason}"
        if unchecked:
            reason += f"; not fully checked: {unchecked}"
        rows.append({
            "profile_id": pid, "exchange_account": account, "allocated_capital_usd": capital,
            "ghost_notional_usd": parts[0], "order_notional_usd": parts[1],
            "position_notional_usd": parts[2], "mismatch_notional_usd": total,
            "threshold_pct": max_notional_pct, "threshold_usd": limit,
            "findings": seen.get(pid, 0), "tripped": tripped,
            "clean": seen.get(pid, 0) == 0 and not unchecked and not systemic, "reason": reason,
            "not_fully_checked": unchecked, "evidence_legs": sorted(legs_of.get(pid, [])),
            "systemic": systemic,
            "unrecorded_fills_usd": _number((unrecorded_fills or {}).get(pid, 0.0)),
        })
    return rows


# --------------------------------------------------------------------------- auto-resume

@dataclass(frozen=True)
class ResumePolicy:
    """The runbook's auto-resume flags."""

    enabled: bool
    min_pause_ms: int
    clean_cycles: int
    cooldown_ms: int


@dataclass(frozen=True)
class GateState:
    """A profile's trading gate as public.profiles holds it."""

    profile_id: str
    trading_state: str
    pause_source: str | None
    paused_at: datetime | None
    last_auto_resume_at: datetime | None


@dataclass(frozen=True)
class CycleRecord:
    """One cycle of the profile's account: when it started, and whether it was clean for the
    profile (a failed cycle, or one that did not check the profile, is not)."""

    cycle_id: str
    started_at: datetime
    clean: bool
    why: str = ""


def cycle_record(cycle_id: str, started_at: datetime, status: str | None, clean: bool | None,
                 findings: int | None = None, tripped: bool | None = None,
                 error: str | None = None) -> CycleRecord:
    """One cycle of the account as the auto-resume streak sees it for a profile: clean only when
    the cycle succeeded (`recon.cycles.status`) and the watchdog judged the profile clean in it;
    a failed or unfinished cycle, or one that never judged the profile, is not."""
    if status != CYCLE_SUCCEEDED:
        why = "the cycle " + (status or "did not finish") + (f": {error}" if error else "")
        return CycleRecord(cycle_id, started_at, False, why)
    if clean is None:
        return CycleRecord(cycle_id, started_at, False, "the watchdog did not judge the profile")
    if not clean:
        return CycleRecord(cycle_id, started_at, False, f"{findings or 0} finding(s) for the profile"
                           + (", the watchdog tripped" if tripped else ""))
    return CycleRecord(cycle_id, started_at, True)


@dataclass(frozen=True)
class Condition:
    name: str  # one of rules.RESUME_CONDITIONS
    holds: bool
    detail: str
    until: datetime | None = None  # when it will hold by the passing of time alone


@dataclass(frozen=True)
class ResumeDecision:
    profile_id: str
    resume: bool
    conditions: tuple[Condition, ...]
    clean_cycle_ids: tuple[str, ...] = ()  # the streak so far (the evidence of a resume)
    clean_cycles_needed: int = 0  # more clean cycles the streak still needs
    # The earliest moment the resume can happen, when nothing but time (and, if
    # clean_cycles_needed, more clean cycles) holds it back; None when it never will by itself.
    earliest_at: datetime | None = None
    held_back_by: tuple[str, ...] = field(default=())


def clean_streak(cycles: Sequence[CycleRecord], since: datetime | None) -> list[CycleRecord]:
    """The trailing run of clean cycles among those that started at or after `since`."""
    after = sorted((c for c in cycles if since is None or c.started_at >= since),
                   key=lambda c: (c.started_at, c.cycle_id))
    streak: list[CycleRecord] = []
    for cycle in reversed(after):
        if not cycle.clean:
            break
        streak.append(cycle)
    return list(reversed(streak))


def _waited(name: str, start: datetime | None, ms: int, now: datetime, started: str, wait: str,
            no_start: str, holds_without_start: bool) -> Condition:
    """A condition that holds once `ms` have passed since `start` (the pause, the last resume)."""
    if start is None:
        return Condition(name, holds_without_start, no_start)
    until = start + timedelta(milliseconds=ms)
    return Condition(name, now >= until, f"{started} {start.isoformat()}; {wait} ({ms} ms) ends "
                                         f"{until.isoformat()}", until)


def auto_resume_decision(gate: GateState, cycles: Sequence[CycleRecord], now: datetime,
                         policy: ResumePolicy) -> ResumeDecision | None:
    """Whether to resume `gate`'s profile now, and which condition holds it back and until when;
    None when the profile is not paused (nothing to resume). `cycles`: the account's cycles
    (any order); only those started at or after the pause count."""
    if gate.trading_state != PAUSED:
        return None
    n = policy.clean_cycles
    conditions = [Condition("auto_resume_enabled", policy.enabled,
                            "ENABLE_RECON_WATCHDOG_AUTO_RESUME is "
                            + ("true" if policy.enabled else "false: an operator resumes"))]
    by_watchdog = gate.pause_source == WATCHDOG_PAUSE_SOURCE
    conditions.append(Condition(
        "pause_source", by_watchdog,
        "paused by the parity watchdog" if by_watchdog else
        f"paused by {gate.pause_source or 'an unknown source'}: only an operator resumes it"))
    conditions.append(_waited("min_pause", gate.paused_at, policy.min_pause_ms, now,
                              "paused since", "the minimum pause", "paused at an unknown time",
                              holds_without_start=False))
    streak = clean_streak(cycles, gate.paused_at)[-n:] if n > 0 else []
    since = [c for c in cycles if gate.paused_at is None or c.started_at >= gate.paused_at]
    breaker = max((c for c in since if not c.clean), key=lambda c: (c.started_at, c.cycle_id),
                  default=None)
    detail = f"{len(streak)} of {n} consecutive clean cycles since the pause"
    if breaker is not None and len(streak) < n:
        detail += f"; cycle {breaker.cycle_id} was not clean" + (f": {breaker.why}"
                                                                 if breaker.why else "")
    conditions.append(Condition("clean_streak", len(streak) >= n, detail))
    conditions.append(_waited("cooldown", gate.last_auto_resume_at, policy.cooldown_ms, now,
                              "last auto-resume", "the cooldown", "never auto-resumed before",
                              holds_without_start=True))
    held = tuple(c.name for c in conditions if not c.holds)
    timed = [c for c in conditions if c.until is not None]
    earliest = None
    if policy.enabled and by_watchdog and gate.paused_at is not None:
        earliest = max([now] + [c.until for c in timed])
    return ResumeDecision(
        profile_id=gate.profile_id, resume=not held, conditions=tuple(conditions),
        clean_cycle_ids=tuple(c.cycle_id for c in streak),
        clean_cycles_needed=max(0, n - len(streak)), earliest_at=earliest, held_back_by=held)
