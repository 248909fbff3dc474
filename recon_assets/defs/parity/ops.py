"""The parity jobs: `position_parity` applies the heartbeat's synthetic exits of one profile;
`resolve_quarantine` is an operator's end of a quarantine."""

import dagster as dg

from recon_assets.core.rules import QUARANTINE_RESOLUTIONS, SYNTHETIC_EXIT
from recon_assets.defs.apply import (Application, ProfileCycleConfig, apply_each, check_partition,
                                     own_attempts_decisions, profile_partitioned_config,
                                     report_outcomes, resolve_cycle)
from recon_assets.defs.operator_record import record_launch
from recon_assets.resources.database import TradingStore
from recon_assets.resources.recon_store import ReconStore
from recon_assets.settings import ReconSettings


@dg.op(description="Closes each slice the cycle's heartbeat decided to close synthetically (its "
                   "Nth consecutive attributed sighting) through recon_synthetic_exit, at the "
                   "snapshot's mark price, exactly once, under the profile's reconciliation lock.",
       tags={"kind": "postgres"})
def apply_parity(context: dg.OpExecutionContext, config: ProfileCycleConfig,
                 settings: ReconSettings, database: TradingStore) -> dict:
    check_partition(context, config.profile_id)
    cycle = resolve_cycle(database, config.profile_id, config.cycle_id,
                          settings.correction_max_cycle_age_seconds)
    rows, not_mine = own_attempts_decisions(
        context, cycle["cycle_id"],
        ReconStore(database).parity_decisions(cycle["cycle_id"], config.profile_id, SYNTHETIC_EXIT))
    if not_mine:
        context.log.warning(not_mine)
    profile, run_id, dry_run = config.profile_id, context.run.run_id, settings.position_parity_dry_run
    context.log.info(f"profile {profile}: {len(rows)} synthetic exit(s) decided in cycle "
                     f"{cycle['cycle_id']}; dry run {dry_run}")

    def application(row: dict) -> Application:
        return Application("recon_synthetic_exit", {
            "p_profile_id": profile, "p_cycle_id": run_id,
            "p_idempotency_key": row["idempotency_key"],
            "p_trade_id": row["trade_id"], "p_slice_no": row["slice_no"],
            "p_qty": row["qty"], "p_price": row["price"],
            "p_price_source": row["price_source"], "p_dry_run": dry_run,
            "p_exited_at": row["checked_at"].isoformat(), "p_check_id": row["check_id"],
            "p_evidence": {"check_id": row["check_id"], "heartbeat_cycle_id": row["cycle_id"],
                           "streak": row["streak"],
                           "streak_started_cycle": row["streak_started_cycle"],
                           "rule": row["reason"]}},
            row["trade_id"], None,
            {"check_id": row["check_id"], "slice_no": row["slice_no"],
             "would_be_idempotency_key": row["idempotency_key"]})

    outcomes = apply_each(
        context, database, profile=profile, dry_run=dry_run,
        max_age_s=settings.reconciling_max_age_seconds, handler=SYNTHETIC_EXIT, rows=rows,
        application=application,
        outcome=lambda row: {"trade_id": row["trade_id"], "slice_no": row["slice_no"],
                             "qty": row["qty"], "price": row["price"], "reason": row["reason"]})
    report_outcomes(context, profile, outcomes,
                    ["trade_id", "slice_no", "qty", "price", "status", "reason"],
                    "synthetic_exits", "_nothing to close_",
                    {"profile_id": profile, "heartbeat_cycle_id": cycle["cycle_id"],
                     "dry_run": dry_run, "not_applied": not_mine or ""})
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
                          database: TradingStore) -> dict:
    record_launch(context, database)
    if config.resolution not in QUARANTINE_RESOLUTIONS:
        raise dg.Failure(f"resolution must be one of {', '.join(QUARANTINE_RESOLUTIONS)}, not "
                         f"{config.resolution!r}")
    row = ReconStore(database).resolve_quarantine(config.profile_id, config.trade_id,
                                                  config.slice_no, config.resolution,
                                                  config.note, context.run.run_id)
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
