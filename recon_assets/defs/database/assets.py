"""Snapshots of the trading database, one consistent read per exchange account."""

import dagster as dg
import pandas as pd

from recon_assets.core.frames import db_snapshot_frames
from recon_assets.core.rules import OPEN_ORDER_STATUSES
from recon_assets.defs.partitions import exchange_account_partitions, profile_partitions
from recon_assets.resources.database import PostgresStore
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


def _markdown_preview(frame: pd.DataFrame, rows: int = 20) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.head(rows).to_markdown(index=False) if len(frame) else "_empty_")


def _snapshot_metadata(name: str, frame: pd.DataFrame) -> dict:
    metadata = {"dagster/row_count": len(frame), "preview": _markdown_preview(frame),
                "read_at": frame.attrs["read_at"]}
    if name == "db_profiles":
        metadata["allocated_capital_usd"] = float(frame["allocated_capital_usd"].sum())
        metadata["paused_profiles"] = int((frame["trading_state"] == "paused").sum())
    elif name == "db_orders":
        open_orders = frame[frame["status"].isin(OPEN_ORDER_STATUSES)]
        metadata["open_orders"] = len(open_orders)
        metadata["open_notional_usd"] = float(
            ((open_orders["qty"] - open_orders["filled_qty"]) * open_orders["price"].fillna(0)).sum())
    elif name == "db_trade_slices":
        metadata["virtual_open_qty"] = float(frame["virtual_open_qty"].sum())
    return metadata


@dg.multi_asset(
    outs={name: dg.AssetOut(description=description, group_name="database",
                            kinds={"postgres", "pandas"})
          for name, (_part, description) in DB_SNAPSHOT_ASSETS.items()},
    partitions_def=exchange_account_partitions,
    can_subset=False,
    # Read after the cycle's start (reconciliation_gate), which restores stale gates first.
    deps=["reconciliation_gate"],
)
def db_snapshot(context: dg.AssetExecutionContext, database: PostgresStore):
    """Reads the account's database state in one statement, so the four snapshots agree."""
    account = context.partition_key
    read_at, frames = db_snapshot_frames(database.snapshot_account(account))
    context.log.info(f"read database snapshot of {account} from {database.describe()} at {read_at}")
    for name, (part, _description) in DB_SNAPSHOT_ASSETS.items():
        frame = frames[part]
        # The stamp the diff checks its evidence by: when, and by which run (cycle).
        frame.attrs["read_at"] = read_at.isoformat()
        frame.attrs["run_id"] = context.run_id
        yield dg.Output(frame, output_name=name, metadata=_snapshot_metadata(name, frame))


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Keeps the exchange_account partitions equal to the accounts named in "
                       "the profiles table, and the profile partitions equal to its profiles.")
def partitions_sensor(context: dg.SensorEvaluationContext, database: PostgresStore):
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
