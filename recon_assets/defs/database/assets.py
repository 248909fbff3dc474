"""The database side of a cycle: its start (`cycle_start`: no overlapping cycle, no profile
left reconciling by a dead run) and the snapshots of the trading database, one consistent read
per exchange account."""

import dagster as dg
import pandas as pd

from recon_assets.core.cycle import reconciling_gate_verdict
from recon_assets.core.escalation import stale_reconciling
from recon_assets.core.frames import db_snapshot_frames
from recon_assets.core.rules import OPEN_ORDER_STATUSES
from recon_assets.defs.partitions import exchange_account_partitions, profile_partitions
from recon_assets.defs.runs import end_orphans, other_running_runs, run_status
from recon_assets.resources.alerts import AlertWebhook, raise_alert
from recon_assets.resources.database import TradingStore
from recon_assets.resources.recon_store import ReconStore
from recon_assets.settings import ReconSettings
from recon_assets.resources.trading_tables import TradingTables

# Asset name -> part of the account snapshot, with the one-line description shown in the UI.
DB_SNAPSHOT_ASSETS = {
    "db_profiles": ("profiles", "Trading profiles on this exchange account: sub tag, allocated "
                                "capital, trading state and pause source."),
    "db_orders": ("orders", "Orders the database holds for this account: every open order plus "
                            "terminal ones touched in the last day."),
    "db_positions": ("positions", "Positions the database holds per profile and symbol on this "
                                  "account."),
    "db_trade_slices": ("trade_slices", "Open lifecycle slices (trade_history) on this account, "
                                        "with their virtual open qty."),
}


CYCLE_JOB = "reconciliation_cycle"
GATE_COLUMNS = ["profile_id", "owner", "owner_status", "age_s", "stale", "why", "action"]


@dg.asset(partitions_def=exchange_account_partitions, group_name="database",
          kinds={"postgres"})
def cycle_start(context: dg.AssetExecutionContext, settings: ReconSettings,
                        database: TradingStore, alert_webhook: AlertWebhook) -> dg.Output[pd.DataFrame]:
    """The cycle's start: no other cycle of the account runs, and profiles a dead run left reconciling trade again."""
    account, run_id = context.partition_key, context.run.run_id
    orphans = end_orphans(context.instance, CYCLE_JOB, account)
    if orphans:
        context.log.warning(f"canceled cycle(s) {', '.join(orphans)} of {account}: their shard "
                            "run is over, nothing was running them")
    others = other_running_runs(context.instance, CYCLE_JOB, account, run_id)
    if others:
        raise dg.Failure(f"cycle {', '.join(others)} of {account} is already running; this one "
                         "does not start (one cycle per account at a time)")
    store = ReconStore(database)
    rows = []
    for session in store.reconciling_sessions(account):
        status = run_status(context.instance, session["owner"])
        verdict = reconciling_gate_verdict(status, float(session["age_s"]),
                                           settings.reconciling_max_age_seconds)
        action = "left to its owner"
        if verdict.stale:
            # Named as the restorer, so the owner (maybe still running) loses the gate for good.
            ended = database.call("recon_end_reconciling", {
                "p_profile_id": session["profile_id"], "p_cycle_id": session["owner"],
                "p_restored_by": run_id})
            action = "restored to trading" if ended.get("restored") else "session cleared"
            raise_alert(database, alert_webhook, stale_reconciling(
                account, session["profile_id"], session["owner"], verdict.why, run_id))
            context.log.warning(f"profile {session['profile_id']} was left reconciling by run "
                                f"{session['owner']} ({verdict.why}): {action}")
        rows.append({"profile_id": session["profile_id"], "owner": session["owner"],
                     "owner_status": status or "unknown", "age_s": round(float(session["age_s"]), 1),
                     "stale": verdict.stale, "why": verdict.why, "action": action})
    gate = pd.DataFrame(rows, columns=GATE_COLUMNS)
    return dg.Output(gate, metadata={
        "reconciling_profiles": len(gate),
        "restored_profiles": int(gate["stale"].sum()) if len(gate) else 0,
        "gate": dg.MetadataValue.md(gate.to_markdown(index=False) if len(gate)
                                    else "_no profile is reconciling_"),
    })


def _markdown_preview(frame: pd.DataFrame, rows: int = 20) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.head(rows).to_markdown(index=False) if len(frame) else "_empty_")


def _snapshot_metadata(name: str, frame: pd.DataFrame) -> dict:
    metadata = {"dagster/row_count": len(frame), "preview": _markdown_preview(frame),
                "read_at": frame.attrs["read_at"]}
    if name == "db_profiles":
        metadata["allocated_capital_usd"] = round(float(frame["allocated_capital_usd"].sum()), 2)
        metadata["paused_profiles"] = int((frame["trading_state"] == "paused").sum())
    elif name == "db_orders":
        open_orders = frame[frame["status"].isin(OPEN_ORDER_STATUSES)]
        metadata["open_orders"] = len(open_orders)
        metadata["open_notional_usd"] = round(float(
            ((open_orders["qty"] - open_orders["filled_qty"]) * open_orders["price"].fillna(0))
            .sum()), 2)
    elif name == "db_trade_slices":
        metadata["virtual_open_qty"] = float(frame["virtual_open_qty"].sum())
    return metadata


@dg.multi_asset(
    outs={name: dg.AssetOut(description=description, group_name="database",
                            kinds={"postgres", "pandas"})
          for name, (_part, description) in DB_SNAPSHOT_ASSETS.items()},
    partitions_def=exchange_account_partitions,
    can_subset=False,
    # Read after the cycle's start, which restores stale reconciling gates first.
    deps=["cycle_start"],
)
def db_snapshot(context: dg.AssetExecutionContext, database: TradingStore):
    """Reads the account's database state in one statement, so the four snapshots agree."""
    account = context.partition_key
    read_at, frames = db_snapshot_frames(database.snapshot_account(account))
    context.log.info(f"read database snapshot of {account} from {database.describe()} at {read_at}")
    for name, (part, _description) in DB_SNAPSHOT_ASSETS.items():
        frame = frames[part]
        # The stamp the diff checks its evidence by: when, and by which run (cycle).
        frame.attrs["read_at"] = read_at.isoformat()
        frame.attrs["run_id"] = context.run.run_id
        yield dg.Output(frame, output_name=name, metadata=_snapshot_metadata(name, frame))


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Keeps the exchange_account partitions equal to the accounts named in "
                       "the profiles table, and the profile partitions equal to its profiles.")
def partitions_sensor(context: dg.SensorEvaluationContext, database: TradingStore):
    tables = TradingTables(database)
    requests = []
    for partitions, wanted in ((exchange_account_partitions, tables.exchange_accounts()),
                               (profile_partitions, tables.profile_ids())):
        existing = set(context.instance.get_dynamic_partitions(partitions.name))
        if wanted - existing:
            requests.append(partitions.build_add_request(sorted(wanted - existing)))
        if existing - wanted:
            requests.append(partitions.build_delete_request(sorted(existing - wanted)))
    return dg.SensorResult(dynamic_partitions_requests=requests)
