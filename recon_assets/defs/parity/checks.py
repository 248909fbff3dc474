"""The runbook's two rules as asset checks on the heartbeat of each cycle (design card: "Asset
checks encode the watchdog threshold and the auto-resume clean-cycle rule"):

- `integrity_watchdog` (blocking, ERROR): fails when any profile of the account has more
  mismatch notional than its percent of allocated capital; its metadata names each profile,
  its notional, its capital and the threshold, and what the watchdog did to its gate. Blocking:
  nothing downstream of the heartbeat runs from a cycle it failed in.
- `watchdog_auto_resume` (WARN): per paused profile, which of the auto-resume conditions hold the
  resume back and until when; fails (WARN) while a profile stays paused.

The heartbeat step decides both (it must: a tripped profile gets no synthetic exit in that very
cycle) and records them; the checks read this cycle's records and judge them again against the
flags, so the verdict in the UI is the one that acted.
"""

import dagster as dg
import pandas as pd

from recon_assets.core.rules import PAUSED
from recon_assets.core.watchdog import threshold_usd
from recon_assets.defs.parity.assets import position_parity_heartbeat
from recon_assets.resources.database import TradingStore
from recon_assets.resources.watchdog_store import WatchdogStore
from recon_assets.settings import ReconSettings
from recon_assets.defs.runs import cycle_id_of


def _account(context: dg.AssetCheckExecutionContext) -> str:
    """The cycle's account: the run's partition (the checks run in the partitioned cycle; they
    are not partitioned themselves, partitioned checks being a preview feature)."""
    account = context.run.tags.get("dagster/partition")
    if not account:
        raise dg.Failure("the watchdog checks run inside a reconciliation cycle of one account")
    return account


def _md(rows: list[dict], columns: list[str], empty: str) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md(empty)
    frame = pd.DataFrame(rows)[columns]
    return dg.MetadataValue.md(frame.astype(object).where(frame.notna(), "")
                               .to_markdown(index=False, floatfmt=".2f"))


@dg.asset_check(asset=position_parity_heartbeat, blocking=True,
                description="Integrity watchdog: fails (ERROR, blocking) when a profile's "
                            "mismatch notional exceeds RECON_POSITION_PARITY_MAX_NOTIONAL_PCT "
                            "percent of its allocated capital; that profile is paused (source "
                            "parity_watchdog) and gets no synthetic exit this cycle.")
def integrity_watchdog(context: dg.AssetCheckExecutionContext, settings: ReconSettings,
                       database: TradingStore) -> dg.AssetCheckResult:
    account, cycle_id = _account(context), cycle_id_of(context.run)
    verdicts = WatchdogStore(database).verdicts(cycle_id, account)
    pct = settings.position_parity_max_notional_pct
    over = []
    for v in verdicts:
        limit = threshold_usd(v["allocated_capital_usd"], pct)
        # The recorded verdict and the rule must agree (a flag changed mid-cycle would not).
        if (v["mismatch_notional_usd"] > limit) != v["tripped"]:
            raise dg.Failure(f"the watchdog's recorded verdict for {v['profile_id']} disagrees "
                             f"with RECON_POSITION_PARITY_MAX_NOTIONAL_PCT={pct:g}: "
                             f"{v['reason']}")
        if v["tripped"]:
            over.append(v["profile_id"])
    if not verdicts:
        raise dg.Failure(f"no watchdog verdict was recorded for cycle {cycle_id} of {account}")
    return dg.AssetCheckResult(
        passed=not over, severity=dg.AssetCheckSeverity.ERROR,
        description=("every profile is within its threshold" if not over else
                     f"tripped for {', '.join(over)}: paused, no synthetic exit this cycle"),
        metadata={
            "threshold_pct": pct, "tripped_profiles": over,
            "reconciliationIntegrityWatchdogTriggered": bool(over),
            "profiles": _md(verdicts, ["profile_id", "mismatch_notional_usd",
                                       "allocated_capital_usd", "threshold_usd", "tripped",
                                       "trading_state", "pause_source", "reason"],
                            "_no profile on this account_"),
            **{f"{v['profile_id']}/mismatch_notional_usd": round(v["mismatch_notional_usd"], 2)
               for v in verdicts},
            **{f"{v['profile_id']}/threshold_usd": round(v["threshold_usd"], 2) for v in verdicts},
        })


@dg.asset_check(asset=position_parity_heartbeat,
                description="Auto-resume: per paused profile, which of the runbook's conditions "
                            "(flag on, paused by the watchdog, minimum pause, clean cycles, "
                            "cooldown) hold its resume back and until when; warns while a "
                            "profile stays paused.")
def watchdog_auto_resume(context: dg.AssetCheckExecutionContext,
                         database: TradingStore) -> dg.AssetCheckResult:
    account = _account(context)
    rows = WatchdogStore(database).resume_outlook(account)
    paused = [r for r in rows if r["trading_state"] == PAUSED]
    shown = [{"profile_id": r["profile_id"], "pause_source": r["pause_source"],
              "paused_at": r["paused_at"].isoformat() if r["paused_at"] else None,
              "held_back_by": ", ".join(r["resume_held_back_by"] or []),
              "auto_resume_earliest_at": (r["resume_earliest_at"].isoformat()
                                          if r["resume_earliest_at"] else "never by itself"),
              "clean_cycles_needed": r["resume_clean_cycles_needed"],
              "last_auto_resume_at": (r["last_auto_resume_at"].isoformat()
                                      if r["last_auto_resume_at"] else None)}
             for r in paused]
    conditions = {f"{r['profile_id']}/conditions": dg.MetadataValue.json(r["resume_conditions"])
                  for r in paused if r["resume_conditions"]}
    return dg.AssetCheckResult(
        passed=not paused, severity=dg.AssetCheckSeverity.WARN,
        description=("no profile of the account is paused" if not paused else
                     "paused: " + "; ".join(f"{s['profile_id']} held back by "
                                            f"{s['held_back_by'] or 'nothing'}" for s in shown)),
        metadata={"paused_profiles": [s["profile_id"] for s in paused],
                  "profiles": _md(shown, list(shown[0]) if shown else [],
                                  "_no profile of the account is paused_"),
                  **conditions})
