"""The record of operators' launches: recon.operator_actions (append-only), written through
`public.recon_record_operator_action` before an operator job acts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recon_assets.resources.database import TradingStore

# Set by Dagster+ on every run launched by a signed-in user; OSS Dagster knows no user.
DAGSTER_USER_TAG = "dagster/user"


def record_operator_action(database: TradingStore, *, job: str, run_id: str,
                           tags: Mapping[str, str], run_config: Mapping[str, Any]) -> int:
    """Record the launch (job, run id, the user tag when present, the whole run config); the id
    of the row. The run config holds no secret: a run reading the environment or rebinding a
    resource was refused before (`resources.guard`)."""
    return int(database.call("recon_record_operator_action", {
        "p_job": job, "p_run_id": run_id, "p_user": tags.get(DAGSTER_USER_TAG),
        "p_config": dict(run_config or {})}))
