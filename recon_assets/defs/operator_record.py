"""What every operator job does first: record its launch (`resources.operator_store`)."""

from __future__ import annotations

import dagster as dg

from recon_assets.resources.database import TradingStore
from recon_assets.resources.operator_store import record_operator_action


def record_launch(context: dg.OpExecutionContext | dg.AssetExecutionContext,
                  database: TradingStore) -> int:
    """Record this run's launch before the job acts; the row's id (logged)."""
    run = context.run
    action_id = record_operator_action(database, job=run.job_name, run_id=run.run_id,
                                       tags=run.tags, run_config=run.run_config)
    context.log.info(f"operator action {action_id} recorded (recon.operator_actions)")
    return action_id
