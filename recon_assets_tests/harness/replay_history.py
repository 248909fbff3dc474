"""A recorded history for the policy replay's unit tests and benchmark, without a database: a
small live loop that records what it decided, row for row as the SQL functions record it.

Its rules are the runbook's, written here independently of `core/` (a ghost's streak, its
decision, the watchdog's charge and trip, the auto-resume conditions), for the simple book it
generates (ghosts of one slice each, no evidence, no shared symbol): the replay decides through
`core/`, so a rule broken there (a ghost closed one cycle late, a resume without its streak)
makes the replay differ from this record, and the fidelity test fails.

Each cycle, each profile may see a new ghost slice (a web-UI close behind the database) of a
random notional, attributed or not; ghosts are confirmed, quarantined or closed by the live
flags, and a closed slice is no longer recorded (an operator closes in the trading app a ghost
left quarantined or blocked for four cycles). The real-database history is recorded by
`test_policy_replay.py` through real cycles; this one exists to be large (10,000 cycles) and to
let a unit test state exactly what happened."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from recon_assets.core.parity import ParityPolicy, Streak
from recon_assets.core.replay import ReplayHistory
from recon_assets.core.rules import (ACTIVE, AUTO_RESUME, BLOCKED, CONFIRMING, PAUSED, QUARANTINE,
                                     SYNTHETIC_EXIT, WATCHDOG_PAUSE, WATCHDOG_PAUSE_SOURCE)
from recon_assets.core.watchdog import GateState, ResumePolicy

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
LIVE_PARITY = ParityPolicy(confirmations=3, require_attribution=True, dry_run=False)
LIVE_RESUME = ResumePolicy(enabled=True, min_pause_ms=0, clean_cycles=2, cooldown_ms=0)


def recorded_history(cycles: int, *, profiles: int = 3, accounts: int = 1, seed: int = 19,
                     ghost_rate: float = 0.05, capital: float = 10_000.0,
                     pct: float = 5.0, parity: ParityPolicy = LIVE_PARITY,
                     resume: ResumePolicy = LIVE_RESUME,
                     every: timedelta = timedelta(minutes=1)) -> ReplayHistory:
    """`cycles` cycles per account, recorded as the live loop would have under the flags given."""
    rng = random.Random(seed)
    h = ReplayHistory()
    for a in range(accounts):
        account = f"acct{a}"
        pids = [f"{account}-p{i}" for i in range(profiles)]
        open_ghosts: dict[tuple, dict] = {}  # key -> {notional, attributed, symbol}
        streaks: dict[tuple, Streak] = {}
        quarantined: set[tuple] = set()
        gates = {p: GateState(p, ACTIVE, None, None, None) for p in pids}
        outcomes: dict[str, list] = {p: [] for p in pids}
        previous = None
        trade = 0
        for c in range(cycles):
            cycle_id = f"{account}-c{c:06d}"
            started = START + c * every
            checked_at = started + timedelta(seconds=20)
            failed = rng.random() < 0.02
            h.cycles.append({"cycle_id": cycle_id, "exchange_account": account,
                             "started_at": started, "status": "failed" if failed else "succeeded",
                             "error": "exchange timeout" if failed else None})
            if failed:
                previous = cycle_id
                for p in pids:
                    outcomes[p].append((started, False))
                continue
            for p in pids:
                if rng.random() < ghost_rate:
                    trade += 1
                    open_ghosts[(p, f"t{trade}", 1)] = {
                        "notional": round(rng.uniform(50, 900), 2),
                        "attributed": rng.random() < 0.8, "symbol": rng.choice(("ADA", "SOL"))}
            rows = []
            for p in pids:  # one supported slice per profile, always
                rows.append(_row(cycle_id, account, (p, f"ok-{p}", 1), "BTCUSDT", False, True,
                                 0.0, 0, None, parity, "cleared"))

            def decide(tripped: dict):
                decided = []
                for key in sorted(open_ghosts):
                    g = open_ghosts[key]
                    streak, began = _streak(streaks.get(key), previous, cycle_id)
                    decision = _decision(streak, g["attributed"], key in quarantined, parity,
                                         key[0] in tripped)
                    decided.append(_row(cycle_id, account, key, g["symbol"] + "USDT", True,
                                        g["attributed"], g["notional"], streak, began, parity,
                                        decision))
                return decided

            ghosts = decide({})
            profile_rows = [{"profile_id": p, "exchange_account": account,
                             "allocated_capital_usd": capital} for p in pids]
            verdicts = _verdicts(profile_rows, ghosts, pct)
            tripped = {v["profile_id"]: v["reason"] for v in verdicts if v["tripped"]}
            if tripped:
                ghosts = decide(tripped)
            for row in ghosts:
                key = (row["profile_id"], row["trade_id"], row["slice_no"])
                streaks[key] = Streak(row["streak"], row["streak_started_cycle"], cycle_id)
                if row["decision"] == QUARANTINE:
                    quarantined.add(key)
                if row["decision"] in (QUARANTINE, BLOCKED):
                    open_ghosts[key]["held"] = open_ghosts[key].get("held", 0) + 1
                if row["decision"] == SYNTHETIC_EXIT or open_ghosts[key].get("held", 0) >= 4:
                    # Closed by the heartbeat, or by an operator in the trading app (a
                    # quarantined or blocked ghost): either way no longer recorded.
                    del open_ghosts[key]
                    quarantined.discard(key)
            h.checks += rows + ghosts
            for v in verdicts:
                h.verdicts.append({**v, "cycle_id": cycle_id, "checked_at": checked_at})
                pid = v["profile_id"]
                outcomes[pid].append((started, v["clean"]))
                gate = gates[pid]
                if v["tripped"] and gate.trading_state != PAUSED:
                    gates[pid] = GateState(pid, PAUSED, WATCHDOG_PAUSE_SOURCE, checked_at,
                                           gate.last_auto_resume_at)
                    h.gate_events.append(_gate(pid, account, WATCHDOG_PAUSE, gate, PAUSED,
                                               WATCHDOG_PAUSE_SOURCE, cycle_id, checked_at))
            for pid in pids:
                gate = gates[pid]
                if gate.trading_state != PAUSED:
                    continue
                if _resumes(gate, outcomes[pid], checked_at, resume):
                    gates[pid] = GateState(pid, ACTIVE, None, None, checked_at)
                    h.gate_events.append(_gate(pid, account, AUTO_RESUME, gate, ACTIVE, None,
                                               cycle_id, checked_at))
            previous = cycle_id
    return h


def _streak(last: Streak | None, previous: str | None, cycle_id: str) -> tuple[int, str]:
    """Consecutive sightings: one more when the last one was in the previous cycle."""
    if last is not None and last.last_cycle == cycle_id:
        return last.count, last.started_cycle  # a retried cycle counts once
    if last is not None and previous is not None and last.last_cycle == previous:
        return last.count + 1, last.started_cycle
    return 1, cycle_id


def _decision(streak: int, attributed: bool, quarantined: bool, parity: ParityPolicy,
              tripped: bool) -> str:
    """The runbook's heartbeat for a ghost with no evidence: quarantined stays; confirm N
    consecutive times; unattributed is quarantined; a tripped profile or dry run blocks."""
    if quarantined:
        return QUARANTINE
    if streak < parity.confirmations:
        return CONFIRMING
    if parity.require_attribution and not attributed:
        return QUARANTINE
    if tripped or parity.dry_run:
        return BLOCKED
    return SYNTHETIC_EXIT


def _verdicts(profiles: list[dict], ghosts: list[dict], pct: float) -> list[dict]:
    """The watchdog: a profile's ghosts' notional against pct of its capital (trips above it);
    clean when nothing is charged."""
    out = []
    for p in profiles:
        mine = [g["mismatch_notional_usd"] for g in ghosts if g["profile_id"] == p["profile_id"]]
        charged, limit = sum(mine), p["allocated_capital_usd"] * pct / 100.0
        tripped = charged > limit
        out.append({**p, "ghost_notional_usd": charged, "order_notional_usd": 0.0,
                    "position_notional_usd": 0.0, "mismatch_notional_usd": charged,
                    "threshold_pct": pct, "threshold_usd": limit, "findings": len(mine),
                    "tripped": tripped, "clean": not mine and not tripped,
                    "reason": f"{charged:.2f} USD charged against {limit:.2f} USD",
                    "not_fully_checked": False, "evidence_legs": [], "systemic": None,
                    "unrecorded_fills_usd": 0.0})
    return out


def _resumes(gate: GateState, outcomes: list[tuple], now: datetime, p: ResumePolicy) -> bool:
    """Auto-resume: enabled, a watchdog pause, the minimum pause and the cooldown over, and the
    last N cycles since the pause all clean."""
    if not p.enabled or gate.pause_source != WATCHDOG_PAUSE_SOURCE or gate.paused_at is None:
        return False
    if now - gate.paused_at < timedelta(milliseconds=p.min_pause_ms):
        return False
    if gate.last_auto_resume_at is not None and \
            now - gate.last_auto_resume_at < timedelta(milliseconds=p.cooldown_ms):
        return False
    since = [clean for started, clean in outcomes if started >= gate.paused_at]
    return len(since) >= p.clean_cycles and all(since[-p.clean_cycles:])


def _row(cycle_id, account, key, symbol, ghost, attributed, notional, streak, began, parity,
         decision) -> dict:
    return {"cycle_id": cycle_id, "exchange_account": account, "profile_id": key[0],
            "trade_id": key[1], "slice_no": key[2], "symbol": symbol, "side": "long",
            "ghost": ghost,
            "attributable": attributed, "mark_price": 0.5, "mismatch_notional_usd": notional,
            "streak": streak, "streak_started_cycle": began,
            "confirmations_required": parity.confirmations, "decision": decision,
            "dry_run": parity.dry_run}


def _gate(pid, account, action, before: GateState, state, source, cycle_id, at) -> dict:
    return {"profile_id": pid, "exchange_account": account, "action": action,
            "previous_state": before.trading_state,
            "previous_pause_source": before.pause_source, "trading_state": state,
            "pause_source": source, "cycle_id": cycle_id, "at": at}
