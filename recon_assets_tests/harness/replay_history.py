"""A recorded history for the policy replay's unit tests and benchmark, without a database: a
small live loop over the core rules (the heartbeat's streak and slice decision, the watchdog,
the auto-resume rule) that records what it decided, row for row as the SQL functions record it.

Each cycle, each profile may see a new ghost slice (a web-UI close behind the database) of a
random notional, attributed or not; ghosts are confirmed, quarantined or closed by the live
flags, and a closed slice is no longer recorded (an operator closes in the trading app a ghost
left quarantined or blocked for four cycles). The real-database history is recorded by
`test_policy_replay.py` through real cycles; this one exists to be large (10,000 cycles) and to
let a unit test state exactly what happened."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from recon_assets.core.parity import ParityPolicy, Streak, next_streak, slice_decision
from recon_assets.core.replay import ReplayHistory
from recon_assets.core.rules import (ACTIVE, AUTO_RESUME, BLOCKED, PAUSED, QUARANTINE, SYNTHETIC_EXIT,
                                     WATCHDOG_PAUSE, WATCHDOG_PAUSE_SOURCE)
from recon_assets.core.watchdog import (GateState, ResumePolicy, auto_resume_decision,
                                        cycle_record, verdict_records)

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
                    outcomes[p].append(cycle_record(cycle_id, started, "failed", None))
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

            def decide(tripped):
                decided = []
                for key in sorted(open_ghosts):
                    g = open_ghosts[key]
                    streak, began = next_streak(streaks.get(key), previous, cycle_id)
                    decision, _ = slice_decision(key, key[0], ghost=True, streak=streak,
                                                 attributed=g["attributed"], mark=0.5,
                                                 policy=parity, quarantined=key in quarantined,
                                                 tripped=tripped.get(key[0]))
                    decided.append(_row(cycle_id, account, key, g["symbol"] + "USDT", True,
                                        g["attributed"], g["notional"], streak, began, parity,
                                        decision))
                return decided

            ghosts = decide({})
            profile_rows = [{"profile_id": p, "exchange_account": account,
                             "allocated_capital_usd": capital} for p in pids]
            verdicts = verdict_records(account=account, profiles=profile_rows, mismatches=[],
                                       checks=rows + ghosts, max_notional_pct=pct)
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
                outcomes[pid].append(cycle_record(cycle_id, started, "succeeded", v["clean"],
                                                  v["findings"], v["tripped"]))
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
                since = []  # the cycles since the pause, newest first (the rule needs no more)
                for record in reversed(outcomes[pid]):
                    if record.started_at < gate.paused_at:
                        break
                    since.append(record)
                decision = auto_resume_decision(gate, since, checked_at, resume)
                if decision is not None and decision.resume:
                    gates[pid] = GateState(pid, ACTIVE, None, None, checked_at)
                    h.gate_events.append(_gate(pid, account, AUTO_RESUME, gate, ACTIVE, None,
                                               cycle_id, checked_at))
            previous = cycle_id
    return h


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
