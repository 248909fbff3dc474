"""An operator pauses or resumes a profile from the UI (Launchpad: the profile and a reason);
the change and its reason are recorded in recon.trading_gate_events. An operator's pause is
never auto-resumed: only `resume_profile` lifts it."""

import dagster as dg

from recon_assets.defs.operator_record import record_launch
from recon_assets.resources.database import TradingStore
from recon_assets.resources.watchdog_store import WatchdogStore


class TradingGateConfig(dg.Config):
    profile_id: str
    reason: str  # recorded with the change; required


def _change(context: dg.OpExecutionContext, config: TradingGateConfig, result: dict) -> dict:
    context.add_output_metadata({
        "profile_id": config.profile_id, "reason": config.reason,
        "status": result.get("status"), "previous_state": result.get("previous_state") or "",
        "previous_pause_source": result.get("previous_pause_source") or "",
        "trading_state": result.get("trading_state"),
        "pause_source": result.get("pause_source") or ""})
    context.log.info(f"{config.profile_id}: {result.get('status')} -> "
                     f"{result.get('trading_state')} ({config.reason})")
    return result


def _reason(context: dg.OpExecutionContext, config: TradingGateConfig,
            database: TradingStore) -> None:
    record_launch(context, database)
    if not config.reason.strip():
        raise dg.Failure("a reason is required: it is recorded with the change for the next "
                         "on-call")


@dg.op(description="Pauses the profile with pause source `operator` (over a watchdog pause "
                   "too, which the operator then owns): no new ENTRY/EXIT flow, never "
                   "auto-resumed.", tags={"kind": "postgres"})
def pause_profile_op(context: dg.OpExecutionContext, config: TradingGateConfig,
                     database: TradingStore) -> dict:
    _reason(context, config, database)
    return _change(context, config,
                   WatchdogStore(database).pause(config.profile_id, config.reason, context.run.run_id))


@dg.op(description="Resumes the profile, whatever paused it (the watchdog, an operator): "
                   "active again, or reconciling while a correction is running.",
       tags={"kind": "postgres"})
def resume_profile_op(context: dg.OpExecutionContext, config: TradingGateConfig,
                      database: TradingStore) -> dict:
    _reason(context, config, database)
    return _change(context, config,
                   WatchdogStore(database).resume(config.profile_id, config.reason, context.run.run_id))


@dg.job(description="An operator pauses a profile (profile, reason).",
        tags={"recon/job": "pause_profile"})
def pause_profile():
    pause_profile_op()


@dg.job(description="An operator resumes a paused profile (profile, reason).",
        tags={"recon/job": "resume_profile"})
def resume_profile():
    resume_profile_op()
