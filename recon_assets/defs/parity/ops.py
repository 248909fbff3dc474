"""The parity jobs: `position_parity` applies the heartbeat's synthetic exits of one profile;
`resolve_quarantine` is an operator's end of a quarantine."""

import dagster as dg
import pandas as pd

from recon_assets.core.corrections import refusal_of
from recon_assets.core.rules import QUARANTINE_RESOLUTIONS, SYNTHETIC_EXIT
from recon_assets.defs.apply import (LockContention, begin_gate, call_under_lock,
                                     check_partition, end_gate, profile_partitioned_config,
                                     record_refusal, resolve_cycle)
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.recon_store import ReconStore
from recon_assets.settings import ReconSettings


class PositionParityConfig(dg.Config):
    profile_id: str
    cycle_id: str = ""  # empty: the latest succeeded cycle of the profile's account


@dg.op(description="Closes each slice the cycle's heartbeat decided to close synthetically (its "
                   "Nth consecutive attributed sighting) through recon_synthetic_exit, at the "
                   "snapshot's mark price, exactly once, under the profile's reconciliation lock.",
       tags={"kind": "postgres"})
def apply_parity(context: dg.OpExecutionContext, config: PositionParityConfig,
                 settings: ReconSettings, database: PostgresStore) -> dict:
    check_partition(context, config.profile_id)
    cycle = resolve_cycle(database, config.profile_id, config.cycle_id,
                          settings.correction_max_cycle_age_seconds)
    rows = ReconStore(database).parity_decisions(cycle["cycle_id"], config.profile_id,
                                                 SYNTHETIC_EXIT)
    profile, run_id, dry_run = config.profile_id, context.run_id, settings.position_parity_dry_run
    context.log.info(f"profile {profile}: {len(rows)} synthetic exit(s) decided in cycle "
                     f"{cycle['cycle_id']}; dry run {dry_run}")
    outcomes = []
    if rows:
        if not dry_run:
            begin_gate(context, database, profile, run_id, settings.reconciling_max_age_seconds)
        try:
            for row in rows:
                outcome = {"trade_id": row["trade_id"], "slice_no": row["slice_no"],
                           "qty": row["qty"], "price": row["price"], "status": "not_applied",
                           "reason": row["reason"]}
                try:
                    result = call_under_lock(database, "recon_synthetic_exit", {
                        "p_profile_id": profile, "p_cycle_id": run_id,
                        "p_idempotency_key": row["idempotency_key"],
                        "p_trade_id": row["trade_id"], "p_slice_no": row["slice_no"],
                        "p_qty": row["qty"], "p_price": row["price"],
                        "p_price_source": row["price_source"], "p_dry_run": dry_run,
                        "p_exited_at": row["checked_at"].isoformat(),
                        "p_evidence": {"check_id": row["check_id"],
                                       "heartbeat_cycle_id": row["cycle_id"],
                                       "streak": row["streak"],
                                       "streak_started_cycle": row["streak_started_cycle"],
                                       "rule": row["reason"]}}, profile, run_id)
                    outcome["status"] = result.get("status", "applied")
                except LockContention as exc:
                    outcome.update(status="lock_contention", reason=str(exc))
                    outcomes.append(outcome)
                    break
                except Exception as exc:  # noqa: BLE001 - one slice's failure never stops the others
                    refusal = refusal_of(exc)
                    record_refusal(context, database, run_id, profile, SYNTHETIC_EXIT, refusal,
                                   row["trade_id"], None, dry_run,
                                   {"check_id": row["check_id"], "slice_no": row["slice_no"],
                                    "would_be_idempotency_key": row["idempotency_key"]})
                    outcome.update(status=refusal.outcome, reason=refusal.reason)
                outcomes.append(outcome)
                context.log.info(f"{row['trade_id']}/{row['slice_no']}: -> {outcome['status']}")
        finally:
            if not dry_run:
                end_gate(context, database, profile, run_id)
    table = pd.DataFrame(outcomes, columns=["trade_id", "slice_no", "qty", "price", "status",
                                            "reason"])
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    context.add_output_metadata({
        "profile_id": profile, "heartbeat_cycle_id": cycle["cycle_id"], "dry_run": dry_run,
        "synthetic_exits": dg.MetadataValue.md(table.to_markdown(index=False) if len(table)
                                               else "_nothing to close_"),
        **{f"status/{k}": int(v) for k, v in counts.items()}})
    if counts.get("lock_contention"):
        raise dg.Failure(f"a lock of {profile} was busy; the synthetic exit(s) left wait for the "
                         "next cycle")
    return {"cycle_id": cycle["cycle_id"], "outcomes": outcomes}


@dg.job(description="The parity heartbeat's synthetic exits for one profile, from its latest "
                    "cycle (launch by hand by choosing the profile as the partition).",
        config=profile_partitioned_config("apply_parity"),
        tags={"recon/job": "position_parity"})
def position_parity():
    apply_parity()


class ResolveQuarantineConfig(dg.Config):
    profile_id: str
    trade_id: str
    slice_no: int = 1
    resolution: str  # release | approve_synthetic_exit
    note: str


@dg.op(description="Ends a slice's quarantine with the operator's resolution and note: release "
                   "(the heartbeat looks again) or approve_synthetic_exit (the operator "
                   "attributes the slice; the heartbeat may close it once confirmed).",
       tags={"kind": "postgres"})
def resolve_quarantine_op(context: dg.OpExecutionContext, config: ResolveQuarantineConfig,
                          database: PostgresStore) -> dict:
    if config.resolution not in QUARANTINE_RESOLUTIONS:
        raise dg.Failure(f"resolution must be one of {', '.join(QUARANTINE_RESOLUTIONS)}, not "
                         f"{config.resolution!r}")
    row = ReconStore(database).resolve_quarantine(config.profile_id, config.trade_id,
                                                  config.slice_no, config.resolution,
                                                  config.note, context.run_id)
    context.add_output_metadata({"profile_id": config.profile_id, "trade_id": config.trade_id,
                                 "slice_no": config.slice_no, "resolution": config.resolution,
                                 "note": config.note, "quarantined_since": str(row["created_at"])})
    context.log.info(f"quarantine of {config.trade_id}/{config.slice_no} ({config.profile_id}) "
                     f"resolved: {config.resolution}: {config.note}")
    return row


@dg.job(description="An operator ends a quarantined slice's quarantine (profile, trade, slice, "
                    "resolution, note); the resolution is recorded in recon.quarantine.",
        tags={"recon/job": "resolve_quarantine"})
def resolve_quarantine():
    resolve_quarantine_op()
