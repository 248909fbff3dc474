"""The parity heartbeat: ghost slices confirmed cycle after cycle (decided in `core.parity`), and
the integrity watchdog and auto-resume that run in the same step (`core.watchdog`)."""

import dagster as dg
import pandas as pd

from recon_assets.core.cycle import evidence_problems, frame_stamps
from recon_assets.core.escalation import quarantine_released, uncharged_drift
from recon_assets.core.escalation import systemic as systemic_alert
from recon_assets.core.backfill import exit_backfill_decisions
from recon_assets.core.evidence import Evidence, pending_evidence
from recon_assets.core.frames import is_hedged
from recon_assets.defs.backfill.assets import backfill_policy
from recon_assets.resources.backfill_store import BackfillStore
from recon_assets.core.frames import json_records
from recon_assets.core.parity import PARITY_CHECK_COLUMNS, ParityPolicy, Streak, parity_checks
from recon_assets.core.rules import CLEARED, PARITY_DECISIONS
from recon_assets.defs.metadata import md_table
from recon_assets.defs.parity import watchdog
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.defs.runs import cycle_id_of, previous_cycle_id
from recon_assets.resources.alerts import AlertWebhook, raise_alert
from recon_assets.resources.database import TradingStore
from recon_assets.resources.recon_store import ReconStore
from recon_assets.settings import ReconSettings

WATCHDOG_COLUMNS = ["profile_id", "mismatch_notional_usd", "allocated_capital_usd",
                    "threshold_pct", "threshold_usd", "tripped", "clean"]
SHOWN_COLUMNS = ["profile_id", "trade_id", "slice_no", "symbol", "virtual_open_qty",
                 "exchange_qty", "mark_price", "attributable", "streak", "decision", "reason",
                 "hold_reason"]


def waiting_evidence(*, account: str, cycle_id: str, settings: ReconSettings,
                     database: TradingStore, refusals: list[dict], profiles: pd.DataFrame,
                     slices: pd.DataFrame, orders: pd.DataFrame,
                     exchange_open_orders: pd.DataFrame, exchange_positions: pd.DataFrame,
                     fills: pd.DataFrame) -> Evidence:
    """The cycle's waiting evidence. The EXIT backfill's candidates are decided again from the
    same snapshots and store state as its own step decided them (a pure function of them), for
    the evidence it found that its recorded decisions do not keep (the candidates awaiting an
    operator, the slices each unattributed fill could be the exit of)."""
    state = BackfillStore(database).matching_state(account, fills)
    read_at = pd.Timestamp(slices.attrs["read_at"])
    backfill = exit_backfill_decisions(
        cycle_id=cycle_id, account=account, slices=slices, profiles=profiles, orders=orders,
        exchange_positions=exchange_positions, fills=fills, policy=backfill_policy(settings),
        booked=state["booked"], hints=state["hints"], reviews=state["reviews"],
        db_read_at=read_at, recency_guard_s=settings.recency_guard_seconds)
    return pending_evidence(
        slices=slices, profiles=profiles, orders=orders, fills=fills, booked=state["booked"],
        hedged=is_hedged(exchange_positions), exchange_open_orders=exchange_open_orders,
        backfill=backfill.decisions, refusals=refusals, db_read_at=read_at,
        recency_guard_s=settings.recency_guard_seconds)


@dg.asset(partitions_def=exchange_account_partitions, group_name="parity",
          kinds={"pandas", "postgres"}, deps=["reconciliation_diff", "exit_backfill_candidates"])
def position_parity_heartbeat(context: dg.AssetExecutionContext, settings: ReconSettings,
                              database: TradingStore, alert_webhook: AlertWebhook,
                              db_profiles: pd.DataFrame, db_orders: pd.DataFrame,
                              db_trade_slices: pd.DataFrame,
                              exchange_open_orders: pd.DataFrame,
                              exchange_positions: pd.DataFrame,
                              exchange_fills: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """One check per open slice per cycle: ghosts confirmed N consecutive cycles are closed at the mark price, held while real evidence waits, or quarantined when unattributed; the integrity watchdog pauses a profile whose drift exceeds its share of capital, and auto-resume lifts that pause."""
    account, cycle_id = context.partition_key, cycle_id_of(context.run)
    store = ReconStore(database)
    if not store.cycle_succeeded(cycle_id, account):
        raise dg.Failure(f"the heartbeat checks a cycle: run {cycle_id} recorded no succeeded "
                         f"cycle of {account}; materialize it with reconciliation_diff")
    stamps = frame_stamps({"db_profiles": db_profiles, "db_orders": db_orders,
                           "db_trade_slices": db_trade_slices,
                           "exchange_open_orders": exchange_open_orders,
                           "exchange_positions": exchange_positions,
                           "exchange_fills": exchange_fills})
    problems = evidence_problems(stamps, pd.Timestamp.now(tz="UTC").to_pydatetime(),
                                 settings.evidence_max_age_seconds,
                                 settings.evidence_max_apart_seconds)
    if problems:
        raise dg.Failure(f"no heartbeat of {account} from this evidence: " + "; ".join(problems))
    enabled = settings.enable_position_parity_heartbeat
    policy = ParityPolicy(settings.position_parity_confirmations,
                          settings.position_parity_require_subtag_attribution,
                          settings.position_parity_dry_run)
    previous, evidence, systemic = None, Evidence(), None
    if enabled:
        state = store.parity_state(account, cycle_id)
        previous = previous_cycle_id(context.instance, context.run.job_name, account, cycle_id)
        evidence = waiting_evidence(
            account=account, cycle_id=cycle_id, settings=settings, database=database,
            refusals=state["refusals"], profiles=db_profiles, slices=db_trade_slices,
            orders=db_orders, exchange_open_orders=exchange_open_orders,
            exchange_positions=exchange_positions, fills=exchange_fills)

        def decide(tripped: dict[str, str] | None) -> pd.DataFrame:
            return parity_checks(
                cycle_id=cycle_id, account=account, previous_cycle_id=previous,
                slices=db_trade_slices, profiles=db_profiles,
                exchange_positions=exchange_positions,
                streaks={k: Streak(*v) for k, v in state["streaks"].items()}, policy=policy,
                quarantined=state["quarantined"],
                clear_streaks={k: Streak(*v) for k, v in state["clear_streaks"].items()},
                approved=state["approved"], backfill_go=state["backfill_go"],
                evidence=evidence, watchdog_tripped=tripped,
                db_read_at=pd.Timestamp(db_trade_slices.attrs["read_at"]),
                recency_guard_s=settings.recency_guard_seconds)

        checks = decide(None)
        systemic = checks.attrs.get("systemic")
    else:
        context.log.warning("ENABLE_RECON_POSITION_PARITY_HEARTBEAT is false: no slice is "
                            "checked or decided (a controlled rollback); the watchdog judges "
                            "the diff alone")
        checks = pd.DataFrame(columns=list(PARITY_CHECK_COLUMNS))
    # The watchdog first: a profile it trips gets no synthetic exit this cycle.
    verdicts = watchdog.judge(account=account, cycle_id=cycle_id, settings=settings,
                              database=database, profiles=db_profiles, checks=checks,
                              heartbeat_checked=enabled, fill_profiles=evidence.fill_profiles,
                              systemic=systemic, unrecorded_fills=evidence.unrecorded)
    tripped = {r.profile_id: r.reason for r in verdicts.itertuples() if r.tripped}
    if enabled and tripped:
        checks = decide(tripped)
    recorded = (store.record_parity_checks(cycle_id, account, json_records(checks),
                                           policy.dry_run, context.run.run_id)
                if enabled else {})
    for released in recorded.get("released") or []:
        raise_alert(database, alert_webhook, quarantine_released(
            account, released["profile_id"], released["trade_id"], int(released["slice_no"]),
            released["why"], f"the parity heartbeat (cycle {cycle_id})"))
    uncharged = verdicts.attrs.get("uncharged") or []
    gate = watchdog.record(context, account=account, cycle_id=cycle_id, database=database,
                           webhook=alert_webhook, verdicts=verdicts, uncharged=uncharged)
    if uncharged:
        context.log.warning(f"{len(uncharged)} position drift(s) on {account} are charged to no "
                            "profile: " + "; ".join(u["reason"] for u in uncharged))
        raise_alert(database, alert_webhook, uncharged_drift(account, cycle_id, uncharged))
    if systemic:
        context.log.warning(systemic)
        raise_alert(database, alert_webhook, systemic_alert(account, cycle_id, systemic))
    resumes = watchdog.auto_resume(context, account=account, cycle_id=cycle_id,
                                   settings=settings, database=database, webhook=alert_webhook)
    counts = checks["decision"].value_counts()
    ghosts = checks[checks["ghost"].astype(bool)]
    flagged = checks[checks["decision"] != CLEARED]
    history = pd.DataFrame(store.parity_history(
        [(r.profile_id, r.trade_id, int(r.slice_no)) for r in flagged.itertuples()]))
    context.log.info(f"heartbeat of {account}: {len(checks)} slice(s), {len(ghosts)} ghost(s); "
                     f"{dict(counts)}; recorded {recorded}; watchdog tripped "
                     f"{sorted(tripped) or 'for no profile'}, paused {gate.get('paused', [])}")
    return dg.Output(checks, metadata={
        "enabled": enabled, "cycle_id": cycle_id, "previous_cycle_id": previous or "",
        "confirmations_required": policy.confirmations, "dry_run": policy.dry_run,
        "checks": len(checks),
        **{f"decision/{d}": int(counts.get(d, 0)) for d in PARITY_DECISIONS},
        # The runbook's runtime fields, for this account and cycle.
        "reconciliationParityMismatchTrades": int(ghosts[["profile_id", "trade_id"]]
                                                  .drop_duplicates().shape[0]),
        "reconciliationParityQuarantinedTrades": int((checks["decision"] == "quarantine").sum()),
        "reconciliationParityMaxMismatchNotionalUsd": round(
            float(ghosts["mismatch_notional_usd"].max()) if len(ghosts) else 0.0, 2),
        "reconciliationParityTotalMismatchNotionalUsd": round(
            float(ghosts["mismatch_notional_usd"].sum()), 2),
        "reconciliationIntegrityWatchdogTriggered": bool(tripped),
        "held_for_evidence": int(checks["hold_reason"].notna().sum()) if len(checks) else 0,
        "systemic": systemic or "",
        "uncharged_drift_usd": round(sum(float(u["notional_usd"]) for u in uncharged), 2),
        "quarantines_released": len(recorded.get("released") or []),
        "decisions_recorded_by_run": recorded.get("run_id") or "",
        "watchdog/tripped_profiles": sorted(tripped),
        "watchdog/paused_now": list(gate.get("paused", [])),
        "watchdog/auto_resumed": [r["profile_id"] for r in resumes if r["resumed"]],
        "watchdog": md_table(verdicts[WATCHDOG_COLUMNS], "_no profile on this account_"),
        "slices": md_table(flagged[SHOWN_COLUMNS], "_every open slice is supported by the exchange_"),
        "checks_behind_them": md_table(history.drop(columns=["n"], errors="ignore"),
                                  "_no slice is confirming, quarantined or blocked_"),
    })
