"""The integrity watchdog and auto-resume, as the heartbeat step runs them: fetch, call the rules
of `core.watchdog`, persist, alert. The rules themselves are in `core/watchdog.py`; the asset
checks that show them are in `checks.py`."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone

import dagster as dg
import pandas as pd

from recon_assets.core.escalation import auto_resumed, watchdog_pause
from recon_assets.core.frames import json_records
from recon_assets.core.watchdog import (GateState, ResumeDecision, ResumePolicy,
                                        auto_resume_decision, clean_streak, cycle_record,
                                        watchdog_verdicts)
from recon_assets.defs.runs import started_runs
from recon_assets.resources.alerts import AlertWebhook, raise_alert
from recon_assets.resources.database import TradingStore
from recon_assets.resources.watchdog_store import WatchdogStore
from recon_assets.settings import ReconSettings


def judge(*, account: str, cycle_id: str, settings: ReconSettings, database: TradingStore,
          profiles: pd.DataFrame, checks: pd.DataFrame, heartbeat_checked: bool,
          fill_profiles: dict | None = None, systemic: str | None = None,
          unrecorded_fills: dict | None = None) -> pd.DataFrame:
    """The watchdog's verdict per profile of the account in this cycle (not yet recorded), from
    the diff's recorded findings and what it could not fully check."""
    store = WatchdogStore(database)
    return watchdog_verdicts(account=account, profiles=profiles,
                             mismatches=store.cycle_mismatches(cycle_id, account), checks=checks,
                             max_notional_pct=settings.position_parity_max_notional_pct,
                             heartbeat_checked=heartbeat_checked, fill_profiles=fill_profiles,
                             not_fully_checked=store.not_fully_checked(cycle_id, account),
                             systemic=systemic, unrecorded_fills=unrecorded_fills)


def record(context: dg.AssetExecutionContext, *, account: str, cycle_id: str,
           database: TradingStore, webhook: AlertWebhook, verdicts: pd.DataFrame,
           uncharged: list[dict] | None = None) -> dict:
    """Record the verdicts and the drift charged to no profile, pause each profile that tripped
    (one transaction), alert each pause."""
    result = WatchdogStore(database).record_watchdog(cycle_id, account, json_records(verdicts),
                                                     context.run.run_id, uncharged)
    by_profile = verdicts.set_index("profile_id")
    for profile in result.get("paused", []):
        v = by_profile.loc[profile]
        context.log.warning(f"integrity watchdog paused {profile}: {v['reason']}")
        raise_alert(database, webhook, watchdog_pause(
            account, profile, v["reason"], cycle_id, float(v["mismatch_notional_usd"]),
            float(v["threshold_usd"])))
    return result


def resume_policy(settings: ReconSettings) -> ResumePolicy:
    return ResumePolicy(settings.enable_watchdog_auto_resume,
                        settings.watchdog_auto_resume_min_pause_ms,
                        settings.watchdog_auto_resume_clean_cycles,
                        settings.watchdog_auto_resume_cooldown_ms)


def outlook(decision: ResumeDecision) -> dict:
    """A decision as recon.watchdog_state and the check's metadata keep it."""
    return {"held_back_by": list(decision.held_back_by),
            "conditions": [{**asdict(c), "until": c.until.isoformat() if c.until else None}
                           for c in decision.conditions],
            "earliest_at": decision.earliest_at,
            "clean_cycles_needed": decision.clean_cycles_needed,
            "clean_cycle_ids": list(decision.clean_cycle_ids)}


def auto_resume(context: dg.AssetExecutionContext, *, account: str, cycle_id: str,
                settings: ReconSettings, database: TradingStore,
                webhook: AlertWebhook) -> list[dict]:
    """Judge every paused profile of the account by the auto-resume rule, with the database's
    clock and the account's cycle history (Dagster's runs, their recorded verdicts); resume
    those for which every condition holds, record the outlook of the others."""
    store = WatchdogStore(database)
    policy = resume_policy(settings)
    now = store.now()
    runs = started_runs(context.instance, context.run.job_name, account,
                        limit=max(50, 4 * policy.clean_cycles))
    outcomes = []
    for row in store.gates(account):
        gate = GateState(row["profile_id"], row["trading_state"], row["pause_source"],
                         row["paused_at"], row["last_auto_resume_at"])
        recorded = store.cycle_outcomes([r[0] for r in runs], gate.profile_id)
        history = [cycle_record(run_id, datetime.fromtimestamp(start, timezone.utc),
                                recorded[run_id]["status"], recorded[run_id]["clean"],
                                recorded[run_id]["findings"], recorded[run_id]["tripped"],
                                recorded[run_id]["error"]) for run_id, _status, start in runs]
        decision = auto_resume_decision(gate, history, now, policy)
        streak = len(clean_streak(history, gate.paused_at))
        if decision is None:
            store.record_resume_outlook(gate.profile_id, account, None, streak)
            continue
        store.record_resume_outlook(gate.profile_id, account, outlook(decision), streak)
        outcome = {"profile_id": gate.profile_id, "pause_source": gate.pause_source,
                   "paused_at": gate.paused_at, "resumed": False,
                   "held_back_by": ", ".join(decision.held_back_by),
                   "earliest_at": decision.earliest_at,
                   "clean_cycles_needed": decision.clean_cycles_needed}
        if decision.resume:
            evidence = {"clean_cycles": list(decision.clean_cycle_ids),
                        "summary": f"{len(decision.clean_cycle_ids)} clean cycle(s): "
                                   + ", ".join(decision.clean_cycle_ids),
                        "conditions": outlook(decision)["conditions"],
                        "judged_at": now.isoformat()}
            result = store.auto_resume(gate.profile_id, cycle_id, context.run.run_id,
                                       gate.paused_at, gate.last_auto_resume_at, evidence)
            outcome["resumed"] = result.get("status") == "applied"
            if outcome["resumed"]:
                context.log.info(f"auto-resumed {gate.profile_id}: {evidence['summary']}")
                raise_alert(database, webhook, auto_resumed(
                    account, gate.profile_id, str(result.get("last_auto_resume_at")), cycle_id,
                    list(decision.clean_cycle_ids)))
                store.record_resume_outlook(gate.profile_id, account, None, streak)
            else:
                context.log.warning(f"auto-resume of {gate.profile_id} refused: {result}")
        outcomes.append(outcome)
    return outcomes
