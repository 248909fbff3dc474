"""The one place a run's config is checked (`core.run_config`): every deployment-bound resource
runs the check when a run sets it up, so a refused run fails before any step reads the database,
calls the exchange or writes a row (a step sets up its resources before its code runs)."""

from __future__ import annotations

import dagster as dg

from recon_assets.core.run_config import refuse_unsafe_run_config


class RunConfigGuard:
    """Mixed into each resource class the deployment binds (before `ConfigurableResource`)."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        if run is not None:  # sensors and schedules set resources up outside any run
            refuse_unsafe_run_config(run.run_config, run.job_name)
        super().setup_for_execution(context)  # type: ignore[misc]
