"""Snapshots of the trading database, one consistent read per exchange account."""


import dagster as dg
import pandas as pd

from recon_assets.core.frames import DB_PROFILES
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.database import PostgresStore


def _frame(rows: list[dict], columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame.from_records(rows, columns=list(columns))


@dg.asset(partitions_def=exchange_account_partitions, group_name="database",
          kinds={"postgres", "pandas"})
def db_profiles(context: dg.AssetExecutionContext, database: PostgresStore) -> dg.Output[pd.DataFrame]:
    """The trading profiles on this exchange account: sub tag, allocated capital, trading state."""
    with database.connect() as conn:
        rows = conn.execute(
            """SELECT id AS profile_id, exchange_account, sub_tag, allocated_capital_usd,
                      trading_state, pause_source, paused_at, last_auto_resume_at
               FROM profiles WHERE exchange_account = %s ORDER BY id""",
            (context.partition_key,)).fetchall()
    frame = _frame(rows, DB_PROFILES)
    frame["allocated_capital_usd"] = frame["allocated_capital_usd"].astype(float)
    return dg.Output(frame, metadata={
        "profiles": len(frame),
        "allocated_capital_usd": float(frame["allocated_capital_usd"].sum()),
        "paused_profiles": int((frame["trading_state"] == "paused").sum()),
        "preview": dg.MetadataValue.md(frame.head(20).to_markdown(index=False) if len(frame) else "_none_"),
    })


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Keeps the exchange_account partitions equal to the accounts named in "
                       "the profiles table.")
def exchange_account_partitions_sensor(context: dg.SensorEvaluationContext, database: PostgresStore):
    with database.connect() as conn:
        wanted = {r["exchange_account"] for r in conn.execute(
            "SELECT DISTINCT exchange_account FROM profiles").fetchall()}
    existing = set(context.instance.get_dynamic_partitions(exchange_account_partitions.name))
    requests = []
    if wanted - existing:
        requests.append(exchange_account_partitions.build_add_request(sorted(wanted - existing)))
    if existing - wanted:
        requests.append(exchange_account_partitions.build_delete_request(sorted(existing - wanted)))
    return dg.SensorResult(dynamic_partitions_requests=requests)

