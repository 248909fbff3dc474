"""The shard run: the cycles of several accounts in one run's process (issue 16).

A run launched by the daemon is a new process (a pod on Kubernetes) that imports dagster, ccxt,
pandas and duckdb and loads the code location before its first step: about 4.3 s of CPU, more
than a whole account's cycle. A shard run pays that once for its accounts. Each account's cycle
is still its own run of `reconciliation_cycle`, executed in this process
(`execute_in_process` on the same instance), so everything keyed on a cycle run keeps working:
its run id is the cycle id, its `dagster/partition` tag is the account, its materializations
drive the correction sensors, its blocking checks fail it alone, and a failed one is recorded
by `failed_cycle_sensor` as that account's failed cycle while the shard goes on with the next.
Each cycle run carries the shard run's id (`recon/shard_run`): when the shard's process dies
mid-cycle, the account's next cycle cancels the orphan (`runs.end_orphans`).
"""

import time

import dagster as dg
import pandas as pd

from recon_assets.defs.database.assets import CYCLE_JOB
from recon_assets.defs.metadata import md_table
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.defs.runs import SHARD_OP, SHARD_RUN_TAG
from recon_assets.resources.database import TradingStore
from recon_assets.resources.recon_store import ReconStore

SHARD_JOB = "reconciliation_shard"
OUTCOME_COLUMNS = ["account", "cycle_run", "status", "seconds", "reason"]
# Dagster's step logs of each cycle stay in that cycle's run; the shard's log gets one line each.
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class ShardConfig(dg.Config):
    accounts: list[str]


def _failure_message(result) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            return event.step_failure_data.error.message.strip().splitlines()[0][:300]
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data.evaluation
            if not data.passed:
                return f"check {data.check_name} of {data.asset_key.to_user_string()} failed"
    return "the cycle run failed"


def _cycle_job(shard_job: dg.JobDefinition) -> dg.JobDefinition:
    """The cycle job bound to the same resources as this shard job (those of the code location
    that launched it, or the ones a test or the benchmark passed)."""
    from recon_assets.definitions import build_defs  # the code location imports this module

    return build_defs(dict(shard_job.resource_defs)).resolve_job_def(CYCLE_JOB)


@dg.op(name=SHARD_OP, out=dg.Out(dg.Nothing),
       description="Runs the reconciliation cycle of each account of the shard, one after the "
                   "other, each its own run; one account's failed cycle does not stop the others.")
def reconcile_shard(context: dg.OpExecutionContext, config: ShardConfig, database: TradingStore):
    cycle_job = _cycle_job(context.job_def)
    known = set(context.instance.get_dynamic_partitions(exchange_account_partitions.name))
    rows = []
    for account in config.accounts:
        started = time.perf_counter()
        row = {"account": account, "cycle_run": "", "reason": ""}
        if account not in known:  # removed from profiles since the schedule's tick
            rows.append({**row, "status": "skipped", "seconds": 0.0,
                         "reason": "no longer an exchange_account partition"})
            continue
        try:
            result = cycle_job.execute_in_process(
                instance=context.instance, partition_key=account, run_config=_QUIET,
                tags={"recon/account": account, SHARD_RUN_TAG: context.run.run_id},
                raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - the next account's cycle still runs
            # No cycle run exists to fail (its creation failed): the shard records the
            # account's failed cycle itself, under the shard's run id.
            message = f"the cycle of {account} could not start: {type(exc).__name__}: {exc}"
            ReconStore(database).record_failed_cycle(context.run.run_id, account, message)
            rows.append({**row, "status": "not started", "reason": message[:300],
                         "seconds": round(time.perf_counter() - started, 3)})
            context.log.error(message)
            continue
        row.update(cycle_run=result.run_id, seconds=round(time.perf_counter() - started, 3))
        if result.success:
            rows.append({**row, "status": "success"})
            context.log.info(f"{account}: cycle {result.run_id} succeeded in {row['seconds']} s")
        else:
            reason = _failure_message(result)
            rows.append({**row, "status": "failure", "reason": reason})
            context.log.warning(f"{account}: cycle {result.run_id} failed ({reason}); the "
                                "shard goes on with the next account")
    outcomes = pd.DataFrame(rows, columns=OUTCOME_COLUMNS)
    counts = outcomes["status"].value_counts().to_dict()
    metadata = {"accounts": len(outcomes), "cycles": md_table(outcomes, "_no account_"),
                "cycle_seconds_total": round(float(outcomes["seconds"].sum()), 3),
                **{f"status/{status}": int(n) for status, n in counts.items()}}
    failed = outcomes[outcomes["status"].isin(["failure", "not started"])]
    if len(failed):
        # Red in the run list, naming the accounts; each one's failure is already that
        # account's failed cycle (recorded by failed_cycle_sensor, or above).
        raise dg.Failure(f"{len(failed)} of {len(outcomes)} cycles of this shard failed: "
                         + ", ".join(failed["account"]), metadata=metadata)
    return dg.Output(None, metadata=metadata)


@dg.job(name=SHARD_JOB, tags={"recon/kind": "shard"},
        description="The reconciliation cycles of a shard of exchange accounts in one run (one "
                    "process, one pod): each account's cycle is its own reconciliation_cycle "
                    "run, started by this one. Requested by reconciliation_shard_schedule when "
                    "RECON_CYCLE_SHARD_SIZE is above 1.")
def reconciliation_shard_job():
    reconcile_shard()
