"""The policy replay: what the runbook flags would have done over the recorded history. Pure (no
I/O, no Dagster, no clock): `defs/replay` loads the history and persists what this returns.

The replay folds the live loop's own decision functions over the recorded cycles, account by
account in the order they started: the streak and decision of every heartbeat check
(`core.parity.next_streak`, `slice_decision`), the integrity watchdog (`core.watchdog.
verdict_records`), the trading gate with the auto-resume rule (`auto_resume_decision`) and the
EXIT backfill's decision per candidate fill (`core.backfill.candidate_decision`). It starts at the
account's first recorded cycle whatever the range asked for, so the state at the start of the
range (streaks, quarantines, pauses) is the replay's own; only what happens inside the range is
reported.

**What is recorded and taken as given** (the flags do not change it): each cycle's outcome, the
exchange's view of every open slice (ghost or not, held, ambiguous, its notional and mark
price), each slice's attribution (an operator's approval included), the diff's findings, each
profile's capital, the backfill's match per candidate fill, the operators' calls (reviews,
quarantine releases, pauses and resumes, applied at their time).

**What the flags change**: streaks and decisions, quarantines, synthetic exits, the watchdog's
charge and verdict, pauses and auto-resumes, backfill GO/NO_GO. A slice the replay closes (a
synthetic exit, a backfill) is skipped in later cycles; a slice the live loop closed but the
replay did not stays open in the replay, as last seen (a ghost goes on being one), so a stricter
setting shows the exits it delays. Beyond the replay's reach, and so documented: a cycle that
never recorded a row (a run that failed before the diff), the heartbeat on/off flag, the grace
minutes, and what a changed decision would have done to the exchange (an exit not taken live
leaves the recorded findings as they were).

**Fidelity**: the fold with the flags each cycle recorded (`ReplayPolicy.follow_recorded`: the
confirmations and dry run of the checks, the percent of the verdicts) must give exactly the
recorded decisions (`fidelity`); a difference is a replay defect, reported with the first
differing cycle.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from recon_assets.core.backfill import BackfillPolicy, Review, candidate_decision
from recon_assets.core.parity import ParityPolicy, SliceKey, Streak, next_streak, slice_decision
from recon_assets.core.rules import (ACTIVE, AMBIGUOUS, AUTO_RESUME, BACKFILL, CLEARED,
                                     CYCLE_SUCCEEDED, GHOST_SLICE, GO, HELD,
                                     HEURISTIC_MATCH_METHODS, OPERATOR_PAUSE, OPERATOR_RESUME,
                                     PAUSED, QUARANTINE, SYNTHETIC_EXIT, WATCHDOG_PAUSE,
                                     WATCHDOG_PAUSE_SOURCE)
from recon_assets.core.watchdog import (CycleRecord, GateState, ResumePolicy,
                                        auto_resume_decision, cycle_record, verdict_records)

LIVE, REPLAY = REPLAY_POLICIES = ("live", "replay")
# What the replay reports, per profile and policy.
(EVENT_SYNTHETIC_EXIT, EVENT_QUARANTINE, EVENT_WATCHDOG_PAUSE, EVENT_AUTO_RESUME,
 EVENT_BACKFILL_GO) = REPLAY_EVENT_KINDS = (
    "synthetic_exit", "quarantine", "watchdog_pause", "auto_resume", "backfill_go")
EVENT_COLUMNS = ("policy", "exchange_account", "profile_id", "kind", "cycle_id", "at", "day",
                 "trade_id", "slice_no", "symbol", "notional_usd", "heuristic", "duration_s",
                 "live_cycle_id", "cycles_from_live", "detail")


@dataclass(frozen=True)
class ReplayPolicy:
    """The flags a replay decides by (the runbook's, minus the heartbeat switch and the grace
    minutes, which change what was recorded rather than what was decided)."""

    parity: ParityPolicy
    max_notional_pct: float
    resume: ResumePolicy
    backfill: BackfillPolicy
    # The fidelity fold: the confirmations and dry run each check recorded, the percent each
    # verdict recorded, instead of the values above (flags can change between cycles).
    follow_recorded: bool = False


@dataclass
class ReplayHistory:
    """The recorded history, as plain records (dicts) with the columns the loader names:

    - `cycles`: recon.cycles (cycle_id, exchange_account, started_at, status, error);
    - `checks`: recon.parity_checks (… profile_id, trade_id, slice_no, symbol, ghost,
      attributable, mark_price, mismatch_notional_usd, streak, streak_started_cycle,
      confirmations_required, decision, dry_run);
    - `mismatches`: recon.mismatches (cycle_id, exchange_account, kind, profile_id, symbol,
      notional_usd, details);
    - `verdicts`: recon.watchdog_checks (cycle_id, exchange_account, profile_id,
      allocated_capital_usd, threshold_pct, tripped, clean, findings, checked_at);
    - `backfill`: recon.backfill_decisions (cycle_id, exchange_account, symbol,
      exchange_fill_id, profile_id, trade_id, slice_no, decision, match_mode, assignable,
      reason, dry_run, fill_qty, fill_price, review_verdict, review_id, review_note: the
      operator's latest call on the pair made before the decision);
    - `gate_events`: recon.trading_gate_events with the profile's account (profile_id,
      exchange_account, action, previous_state, previous_pause_source, trading_state,
      pause_source, cycle_id, at);
    - `operator_releases`: quarantines an operator ended (profile_id, trade_id, slice_no,
      released_at).
    """

    cycles: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    mismatches: list[dict] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)
    backfill: list[dict] = field(default_factory=list)
    gate_events: list[dict] = field(default_factory=list)
    operator_releases: list[dict] = field(default_factory=list)


@dataclass
class FoldResult:
    """One policy's decisions over the history: per check, per verdict, per gate change and per
    backfill candidate (keyed for the fidelity comparison), and the events it reports."""

    checks: dict[tuple, tuple] = field(default_factory=dict)  # (cycle, slice) -> (decision, streak)
    verdicts: dict[tuple, tuple] = field(default_factory=dict)  # (cycle, profile) -> (tripped, clean)
    gates: set[tuple] = field(default_factory=set)  # (cycle, profile, action)
    backfill: dict[tuple, str] = field(default_factory=dict)  # (cycle, symbol, fill id) -> GO|NO_GO
    events: list[dict] = field(default_factory=list)
    cycles: int = 0


@dataclass
class ReplayResult:
    live: FoldResult
    replay: FoldResult
    fidelity_ok: bool
    differences: list[dict]
    first_difference: dict | None
    events: list[dict]  # both policies, in the range, EVENT_COLUMNS
    summary: list[dict]  # per profile, side by side
    per_day: list[dict]  # per day and kind, side by side


def _number(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _key(row: Mapping) -> SliceKey:
    return (row["profile_id"], row["trade_id"], int(row["slice_no"]))


def _by_cycle(rows: Iterable[dict]) -> dict[tuple, list[dict]]:
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        grouped[(row["exchange_account"], row["cycle_id"])].append(row)
    return grouped


@dataclass
class _Gate:
    state: str = ACTIVE
    source: str | None = None
    paused_at: datetime | None = None
    last_auto_resume_at: datetime | None = None
    pause_event: dict | None = None  # the open watchdog pause this policy reported


def fold(history: ReplayHistory, policy: ReplayPolicy, policy_name: str = REPLAY) -> FoldResult:
    """Every account's recorded cycles, decided again under `policy` (see the module
    docstring). The events carry `policy_name`."""
    out = FoldResult()
    checks, mismatches = _by_cycle(history.checks), _by_cycle(history.mismatches)
    verdicts, backfill = _by_cycle(history.verdicts), _by_cycle(history.backfill)
    cycles_of: dict[str, list[dict]] = defaultdict(list)
    for cycle in history.cycles:
        cycles_of[cycle["exchange_account"]].append(cycle)
    operator_inputs: dict[str, list[tuple]] = defaultdict(list)  # account -> (at, kind, row)
    accounts_of_profile: dict[str, str] = {}
    for row in history.verdicts:
        accounts_of_profile[row["profile_id"]] = row["exchange_account"]
    for row in history.checks:
        accounts_of_profile.setdefault(row["profile_id"], row["exchange_account"])
    first_gate_event: dict[str, dict] = {}
    for row in sorted(history.gate_events, key=lambda r: r["at"]):
        first_gate_event.setdefault(row["profile_id"], row)
        if row["action"] in (OPERATOR_PAUSE, OPERATOR_RESUME):
            operator_inputs[row["exchange_account"]].append((row["at"], "gate", row))
    for row in history.operator_releases:
        account = accounts_of_profile.get(row["profile_id"])
        if account is not None:
            operator_inputs[account].append((row["released_at"], "release", row))
    for account in sorted(cycles_of):
        _fold_account(account, sorted(cycles_of[account], key=lambda c: (c["started_at"],
                                                                         c["cycle_id"])),
                      checks, mismatches, verdicts, backfill,
                      sorted(operator_inputs[account], key=lambda i: i[0]), first_gate_event,
                      policy, policy_name, out)
    return out


def _fold_account(account: str, cycles: list[dict], checks: Mapping, mismatches: Mapping,
                  verdicts: Mapping, backfill: Mapping, operator_inputs: list[tuple],
                  first_gate_event: Mapping[str, dict], policy: ReplayPolicy, name: str,
                  out: FoldResult) -> None:
    streaks: dict[SliceKey, Streak] = {}
    clear_streaks: dict[SliceKey, Streak] = {}  # quarantined slices the exchange supports again
    quarantined: set[SliceKey] = set()
    closed: set[SliceKey] = set()  # closed by this policy
    carried: dict[SliceKey, dict] = {}  # closed live, open here: the last recorded row
    last_row: dict[SliceKey, dict] = {}
    gates: dict[str, _Gate] = {}
    history: list[tuple[str, datetime, str, dict]] = []  # (cycle, started, status, clean by profile)
    pending = list(operator_inputs)
    previous_cycle: str | None = None

    def gate_of(profile: str) -> _Gate:
        if profile not in gates:
            first = first_gate_event.get(profile)
            gates[profile] = (_Gate(first["previous_state"], first.get("previous_pause_source"))
                              if first else _Gate())
        return gates[profile]

    def close_pause(profile: str, at: datetime, how: str) -> None:
        event = gate_of(profile).pause_event
        if event is not None:
            event["duration_s"] = (at - event["at"]).total_seconds()
            event["detail"] += f"; ended by {how} at {at.isoformat()}"
            gate_of(profile).pause_event = None

    for index, cycle in enumerate(cycles):
        cycle_id = cycle["cycle_id"]
        recorded_verdicts = verdicts.get((account, cycle_id), [])
        judged = cycle["status"] == CYCLE_SUCCEEDED and bool(recorded_verdicts)
        now = (min(v["checked_at"] for v in recorded_verdicts) if recorded_verdicts
               else cycle["started_at"])
        # The operators' calls made before this cycle's decisions.
        while pending and pending[0][0] <= now:
            at, kind, row = pending.pop(0)
            if kind == "release":
                quarantined.discard(_key(row))
                continue
            gate = gate_of(row["profile_id"])
            if row["action"] == OPERATOR_RESUME and gate.state == PAUSED:
                close_pause(row["profile_id"], at, "an operator's resume")
            gate.state, gate.source = row["trading_state"], row.get("pause_source")
            gate.paused_at = at if row["trading_state"] == PAUSED else None
        if not judged:
            history.append((cycle_id, cycle["started_at"], cycle["status"], {}))
            previous_cycle = cycle_id
            continue
        out.cycles += 1
        # The EXIT backfill's decision per candidate fill.
        backfill_go: set[SliceKey] = set()
        for row in backfill.get((account, cycle_id), []):
            review = (Review(row["review_verdict"], int(row["review_id"]), row.get("review_note")
                             or "") if row.get("review_verdict") else None)
            decision, _ = candidate_decision(row.get("match_mode"), bool(row.get("assignable")),
                                             review, policy.backfill, row.get("reason") or "")
            out.backfill[(cycle_id, row["symbol"], row["exchange_fill_id"])] = decision
            if decision == GO and row.get("profile_id") and _key(row) not in closed:
                backfill_go.add(_key(row))
                out.events.append(_event(
                    name, account, row["profile_id"], EVENT_BACKFILL_GO, cycle_id, now,
                    row["trade_id"], int(row["slice_no"]), row.get("symbol"),
                    _number(row.get("fill_qty")) * _number(row.get("fill_price")),
                    heuristic=row.get("match_mode") in HEURISTIC_MATCH_METHODS,
                    detail=f"fill {row['exchange_fill_id']} by {row.get('match_mode')}"))
        # This cycle's checks: the recorded ones of slices still open here, and the slices the
        # live loop closed that are still open here, as last seen.
        rows = [r for r in checks.get((account, cycle_id), []) if _key(r) not in closed]
        seen = {_key(r) for r in rows}
        rows += [{**row, "cycle_id": cycle_id} for key, row in carried.items() if key not in seen]
        rows.sort(key=lambda r: (r["symbol"], *_key(r)))
        pct = policy.max_notional_pct
        if policy.follow_recorded:
            pct = _number(recorded_verdicts[0].get("threshold_pct")) or pct
        ghost_streaks, clears = {}, {}
        for row in rows:
            key, hold = _key(row), row.get("hold_reason")
            if row["ghost"] and not (hold and key not in backfill_go):
                ghost_streaks[key] = next_streak(streaks.get(key), previous_cycle, cycle_id)
            elif not row["ghost"] and key in quarantined and row["decision"] not in (HELD,
                                                                                  AMBIGUOUS):
                clears[key] = next_streak(clear_streaks.get(key), previous_cycle, cycle_id)

        def decide(tripped: Mapping[str, str]) -> list[dict]:
            decided = []
            for row in rows:
                key = _key(row)
                parity = policy.parity
                if policy.follow_recorded:
                    parity = replace(parity, confirmations=int(row["confirmations_required"]),
                                     dry_run=bool(row.get("dry_run")))
                streak, started = ghost_streaks.get(key, (0, None))
                clear, clear_started = clears.get(key, (0, None))
                if not row["ghost"] and row["decision"] in (HELD, AMBIGUOUS):
                    # Held (not checked) and ambiguous slices do not depend on the flags.
                    decision = row["decision"]
                else:
                    decision, _ = slice_decision(
                        key, row["profile_id"], ghost=bool(row["ghost"]), streak=streak,
                        attributed=bool(row["attributable"]),
                        mark=_number(row.get("mark_price")) or None, policy=parity,
                        hold=row.get("hold_reason"), quarantined=key in quarantined,
                        clear_streak=clear, backfill_go=key in backfill_go,
                        tripped=tripped.get(row["profile_id"]))
                decided.append({**row, "decision": decision, "streak": streak,
                                "streak_started_cycle": started, "dry_run": parity.dry_run,
                                "confirmations_required": parity.confirmations,
                                "clear_streak": clear, "clear_started_cycle": clear_started})
            return decided

        decided = decide({})
        profiles = [{"profile_id": v["profile_id"], "exchange_account": account,
                     "allocated_capital_usd": v["allocated_capital_usd"]}
                    for v in recorded_verdicts]
        recorded_mismatches = mismatches.get((account, cycle_id), [])
        heartbeat_checked = bool(rows) or not any(m["kind"] == GHOST_SLICE
                                                  for m in recorded_mismatches)
        fill_profiles: dict[tuple[str, str], set[str]] = {}
        for v in recorded_verdicts:
            for leg in v.get("evidence_legs") or []:
                symbol, _, side = str(leg).rpartition("|")
                fill_profiles.setdefault((symbol, side), set()).add(v["profile_id"])
        judged_now = verdict_records(
            account=account, profiles=profiles, mismatches=recorded_mismatches, checks=decided,
            max_notional_pct=pct, heartbeat_checked=heartbeat_checked,
            fill_profiles=fill_profiles,
            not_fully_checked={v["profile_id"]: v["not_fully_checked"]
                               for v in recorded_verdicts if v.get("not_fully_checked")},
            systemic=next((v["systemic"] for v in recorded_verdicts if v.get("systemic")), None),
            unrecorded_fills={v["profile_id"]: v.get("unrecorded_fills_usd") or 0.0
                              for v in recorded_verdicts})
        tripped = {v["profile_id"]: v["reason"] for v in judged_now if v["tripped"]}
        if tripped:
            decided = decide(tripped)
        # Record: streaks, quarantines, closes.
        checked = set()
        for row in decided:
            key = _key(row)
            checked.add(key)
            last_row[key] = row
            out.checks[(cycle_id, key)] = (row["decision"], row["streak"])
            if row["streak"]:
                streaks[key] = Streak(row["streak"], row["streak_started_cycle"], cycle_id)
            else:
                streaks.pop(key, None)
            if row["clear_streak"]:
                clear_streaks[key] = Streak(row["clear_streak"], row["clear_started_cycle"],
                                            cycle_id)
            else:
                clear_streaks.pop(key, None)
            dry = row["dry_run"]
            if row["decision"] == QUARANTINE and key not in quarantined and not dry:
                quarantined.add(key)
                out.events.append(_event(name, account, key[0], EVENT_QUARANTINE, cycle_id, now,
                                         key[1], key[2], row["symbol"],
                                         _number(row.get("mismatch_notional_usd")),
                                         detail=f"streak {row['streak']}"))
            if row["decision"] == CLEARED:
                quarantined.discard(key)
            if row["decision"] == SYNTHETIC_EXIT and not dry:
                closed.add(key)
                out.events.append(_event(name, account, key[0], EVENT_SYNTHETIC_EXIT, cycle_id,
                                         now, key[1], key[2], row["symbol"],
                                         _number(row.get("mismatch_notional_usd")),
                                         detail=f"confirmed {row['streak']} of "
                                                f"{row['confirmations_required']}"))
            elif row["decision"] == BACKFILL:
                closed.add(key)
            carried.pop(key, None) if key in closed else None
        for key in backfill_go:
            if not any(r.get("dry_run") for r in backfill.get((account, cycle_id), [])
                       if r.get("profile_id") and _key(r) == key):
                closed.add(key)
                carried.pop(key, None)
        # A quarantine ends when its slice is no longer checked (closed) in this account.
        quarantined = {k for k in quarantined if k in checked}
        # Slices the live loop closed in this cycle that stay open here.
        for row in checks.get((account, cycle_id), []):
            key = _key(row)
            live_closed = (row["decision"] == SYNTHETIC_EXIT and not row.get("dry_run")) \
                or row["decision"] == BACKFILL
            if live_closed and key not in closed:
                carried[key] = last_row.get(key, row)
        for row in backfill.get((account, cycle_id), []):
            if row["decision"] == GO and not row.get("dry_run") and row.get("profile_id") \
                    and _key(row) not in closed and _key(row) in last_row:
                carried[_key(row)] = last_row[_key(row)]
        # The watchdog's verdict and the trading gate, then auto-resume.
        clean_by_profile = {}
        for v in judged_now:
            pid = v["profile_id"]
            out.verdicts[(cycle_id, pid)] = (bool(v["tripped"]), bool(v["clean"]))
            clean_by_profile[pid] = v
            gate = gate_of(pid)
            if v["tripped"] and gate.state != PAUSED:
                gate.state, gate.source, gate.paused_at = PAUSED, WATCHDOG_PAUSE_SOURCE, now
                out.gates.add((cycle_id, pid, WATCHDOG_PAUSE))
                event = _event(name, account, pid, EVENT_WATCHDOG_PAUSE, cycle_id, now, None,
                               None, None, _number(v["mismatch_notional_usd"]),
                               detail=v["reason"])
                out.events.append(event)
                gate.pause_event = event
        history.append((cycle_id, cycle["started_at"], cycle["status"], clean_by_profile))
        for v in judged_now:
            pid = v["profile_id"]
            gate = gate_of(pid)
            if gate.state != PAUSED:
                continue
            # Only the cycles since the pause count (the rule ignores older ones): read back
            # from the newest, so a long history costs nothing per cycle.
            records = []
            for c, started, status, by_profile in reversed(history):
                if gate.paused_at is not None and started < gate.paused_at:
                    break
                records.append(_cycle_record(c, started, status, by_profile.get(pid)))
            decision = auto_resume_decision(
                GateState(pid, gate.state, gate.source, gate.paused_at, gate.last_auto_resume_at),
                records, now, policy.resume)
            if decision is not None and decision.resume:
                close_pause(pid, now, "auto-resume")
                gate.state, gate.source, gate.paused_at = ACTIVE, None, None
                gate.last_auto_resume_at = now
                out.gates.add((cycle_id, pid, AUTO_RESUME))
                out.events.append(_event(name, account, pid, EVENT_AUTO_RESUME, cycle_id, now,
                                         None, None, None, 0.0,
                                         detail=f"{len(decision.clean_cycle_ids)} clean "
                                                f"cycle(s): {', '.join(decision.clean_cycle_ids)}"))
        previous_cycle = cycle_id
        del index


def _cycle_record(cycle_id: str, started: datetime, status: str,
                  verdict: Mapping | None) -> CycleRecord:
    if verdict is None:
        return cycle_record(cycle_id, started, status, None)
    return cycle_record(cycle_id, started, status, bool(verdict["clean"]),
                        int(verdict["findings"]), bool(verdict["tripped"]))


def _event(policy: str, account: str, profile: str, kind: str, cycle_id: str, at: datetime,
           trade_id: str | None, slice_no: int | None, symbol: str | None, notional: float,
           heuristic: bool = False, detail: str = "") -> dict:
    return {"policy": policy, "exchange_account": account, "profile_id": profile, "kind": kind,
            "cycle_id": cycle_id, "at": at, "day": at.date().isoformat(), "trade_id": trade_id,
            "slice_no": slice_no, "symbol": symbol, "notional_usd": round(notional, 8),
            "heuristic": heuristic, "duration_s": None, "live_cycle_id": None,
            "cycles_from_live": None, "detail": detail}


# --------------------------------------------------------------------------- fidelity


def recorded_decisions(history: ReplayHistory) -> FoldResult:
    """What the live loop recorded, keyed as a fold's decisions are."""
    out = FoldResult()
    judged = {(v["exchange_account"], v["cycle_id"]) for v in history.verdicts}
    succeeded = {(c["exchange_account"], c["cycle_id"]) for c in history.cycles
                 if c["status"] == CYCLE_SUCCEEDED}
    judged = judged & succeeded  # once: per row it made the comparison quadratic
    for row in history.checks:
        if (row["exchange_account"], row["cycle_id"]) in judged:
            out.checks[(row["cycle_id"], _key(row))] = (row["decision"], int(row["streak"] or 0))
    for row in history.verdicts:
        if (row["exchange_account"], row["cycle_id"]) in succeeded:
            out.verdicts[(row["cycle_id"], row["profile_id"])] = (bool(row["tripped"]),
                                                                 bool(row["clean"]))
    for row in history.gate_events:
        if row["action"] in (WATCHDOG_PAUSE, AUTO_RESUME) and row.get("cycle_id"):
            out.gates.add((row["cycle_id"], row["profile_id"], row["action"]))
    for row in history.backfill:
        if (row["exchange_account"], row["cycle_id"]) in judged:
            out.backfill[(row["cycle_id"], row["symbol"], row["exchange_fill_id"])] = \
                row["decision"]
    return out


def differences(recorded: FoldResult, replayed: FoldResult,
                started: Mapping[str, datetime]) -> list[dict]:
    """Every decision the fold does not reproduce, first cycle first."""
    found = []
    for what, left, right in (("check", recorded.checks, replayed.checks),
                              ("verdict", recorded.verdicts, replayed.verdicts),
                              ("backfill", recorded.backfill, replayed.backfill)):
        for key in sorted(set(left) | set(right), key=str):
            if left.get(key) != right.get(key):
                found.append({"what": what, "cycle_id": key[0], "key": str(key[1:]),
                              "recorded": str(left.get(key)), "replayed": str(right.get(key))})
    for key in sorted(recorded.gates ^ replayed.gates):
        found.append({"what": "gate", "cycle_id": key[0], "key": str(key[1:]),
                      "recorded": str(key in recorded.gates),
                      "replayed": str(key in replayed.gates)})
    far = datetime.max.replace(tzinfo=None)
    found.sort(key=lambda d: (_naive(started.get(d["cycle_id"])) or far, d["what"], d["key"]))
    return found


def _naive(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=None) - (at.utcoffset() or timedelta(0)) if at else None


# --------------------------------------------------------------------------- the replay


def replay(history: ReplayHistory, live: ReplayPolicy, overrides: ReplayPolicy, *,
           since: datetime | None = None, until: datetime | None = None,
           profiles: Sequence[str] = ()) -> ReplayResult:
    """Fold the history with the live flags (following what each cycle recorded) and with the
    overrides; check the live fold against the record; report both policies' events inside
    [since, until) (of `profiles` when given), side by side."""
    live_fold = fold(history, replace(live, follow_recorded=True), LIVE)
    replay_fold = fold(history, replace(overrides, follow_recorded=False), REPLAY)
    started = {c["cycle_id"]: c["started_at"] for c in history.cycles}
    diffs = differences(recorded_decisions(history), live_fold, started)
    position = {}
    for account in {c["exchange_account"] for c in history.cycles}:
        mine = sorted((c for c in history.cycles if c["exchange_account"] == account),
                      key=lambda c: (c["started_at"], c["cycle_id"]))
        position.update({(account, c["cycle_id"]): i for i, c in enumerate(mine)})
    live_exits = {(e["profile_id"], e["trade_id"], e["slice_no"]): e for e in live_fold.events
                  if e["kind"] == EVENT_SYNTHETIC_EXIT}
    for event in replay_fold.events:
        if event["kind"] != EVENT_SYNTHETIC_EXIT:
            continue
        twin = live_exits.get((event["profile_id"], event["trade_id"], event["slice_no"]))
        if twin is not None:
            event["live_cycle_id"] = twin["cycle_id"]
            event["cycles_from_live"] = (position[(event["exchange_account"], event["cycle_id"])]
                                         - position[(twin["exchange_account"],
                                                     twin["cycle_id"])])

    def shown(event: dict) -> bool:
        at = _naive(event["at"])
        return ((since is None or at >= _naive(since)) and (until is None or at < _naive(until))
                and (not profiles or event["profile_id"] in profiles))

    events = sorted((e for e in live_fold.events + replay_fold.events if shown(e)),
                    key=lambda e: (_naive(e["at"]), e["policy"], e["profile_id"], e["kind"]))
    return ReplayResult(live=live_fold, replay=replay_fold, fidelity_ok=not diffs,
                        differences=diffs, first_difference=diffs[0] if diffs else None,
                        events=events, summary=summarize(events), per_day=per_day(events))


def summarize(events: Sequence[dict]) -> list[dict]:
    """Per profile: each kind's count and notional for the live flags and the overrides."""
    table: dict[str, dict] = {}
    for event in events:
        row = table.setdefault(event["profile_id"], {"profile_id": event["profile_id"],
                                                     "exchange_account": event["exchange_account"]})
        for kind in REPLAY_EVENT_KINDS:
            for policy in REPLAY_POLICIES:
                row.setdefault(f"{policy}_{kind}", 0)
        row[f"{event['policy']}_{event['kind']}"] += 1
        if event["kind"] in (EVENT_SYNTHETIC_EXIT, EVENT_BACKFILL_GO):
            name = f"{event['policy']}_{event['kind']}_notional_usd"
            row[name] = round(row.get(name, 0.0) + event["notional_usd"], 2)
        if event["kind"] == EVENT_WATCHDOG_PAUSE:
            name = f"{event['policy']}_paused_s"
            row[name] = round(row.get(name, 0.0) + (event["duration_s"] or 0.0), 1)
    return [table[p] for p in sorted(table)]


def per_day(events: Sequence[dict]) -> list[dict]:
    """Per day and kind: how many for the live flags and for the overrides."""
    table: dict[tuple, dict] = {}
    for event in events:
        row = table.setdefault((event["day"], event["kind"]), {
            "day": event["day"], "kind": event["kind"], LIVE: 0, REPLAY: 0})
        row[event["policy"]] += 1
    return [table[k] for k in sorted(table)]
