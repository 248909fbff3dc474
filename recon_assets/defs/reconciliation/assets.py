"""The reconciliation diff: the mismatch dataset analysts query and the corrections act on."""

import json

import dagster as dg
import pandas as pd

from recon_assets.core.cycle import evidence_problems, evidence_time, frame_stamps
from recon_assets.core.diff import reconciliation_diff as compute_diff
from recon_assets.core.rules import MISMATCH_KINDS, MISSING_FROM_EXCHANGE, MISSING_IN_DB
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.database import TradingStore
from recon_assets.resources.recon_store import ReconStore
from recon_assets.settings import ReconSettings
from recon_assets.defs.runs import cycle_id_of


# The runbook's names, recorded as materialization metadata so the UI plots them over time.
RUNBOOK_COUNTS = {
    "reconciliationMismatchCount": None,
    "reconciliationMissingFromExchange": MISSING_FROM_EXCHANGE,
    "reconciliationMissingInDb": MISSING_IN_DB,
}
PREVIEW_COLUMNS = ["kind", "profile_id", "symbol", "client_order_id", "trade_id", "db_qty",
                   "exchange_qty", "db_status", "exchange_status", "notional_usd"]


def mismatch_records(diff: pd.DataFrame) -> list[dict]:
    """The diff as JSON-ready rows for `recon_record_cycle` (NaN -> null, details as objects)."""
    rows = json.loads(diff.drop(columns=["cycle_id"]).to_json(orient="records", date_format="iso"))
    for row in rows:
        if isinstance(row.get("details"), str):
            row["details"] = json.loads(row["details"])
    return rows


def _run_start(context: dg.AssetExecutionContext) -> str:
    stats = context.instance.get_run_stats(context.run.run_id)
    started = stats.start_time or stats.launch_time
    return pd.Timestamp(started, unit="s", tz="UTC").isoformat() if started else pd.Timestamp.now(tz="UTC").isoformat()


def diff_metadata(diff: pd.DataFrame, cycle_id: str) -> dict:
    counts = diff["kind"].value_counts()
    metadata: dict = {"cycle_id": cycle_id, "dagster/row_count": len(diff)}
    for name, kind in RUNBOOK_COUNTS.items():
        metadata[name] = len(diff) if kind is None else int(counts.get(kind, 0))
    for kind in MISMATCH_KINDS:
        metadata[f"kind/{kind}"] = int(counts.get(kind, 0))
    metadata["notional_at_risk_usd"] = round(float(diff["notional_usd"].sum()), 2) if len(diff) else 0.0
    metadata["profiles_with_mismatches"] = int(diff["profile_id"].dropna().nunique())
    metadata["suppressed_recent_rows"] = int(diff.attrs.get("suppressed_recent", 0))
    preview = diff.loc[:, PREVIEW_COLUMNS].head(50)
    preview = preview.astype(object).where(preview.notna(), "")  # a blank cell, not "nan"
    metadata["mismatches"] = dg.MetadataValue.md(
        preview.to_markdown(index=False, floatfmt=".8g") if len(preview) else "_no mismatches: the database agrees with the exchange_")
    return metadata


@dg.asset(partitions_def=exchange_account_partitions, group_name="reconciliation",
          kinds={"pandas", "postgres"})
def reconciliation_diff(
    context: dg.AssetExecutionContext,
    settings: ReconSettings,
    database: TradingStore,
    db_profiles: pd.DataFrame,
    db_orders: pd.DataFrame,
    db_positions: pd.DataFrame,
    db_trade_slices: pd.DataFrame,
    exchange_open_orders: pd.DataFrame,
    exchange_positions: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Every way this account's database differs from the exchange, per profile, with the notional at stake."""
    cycle_id = cycle_id_of(context.run)
    frames = {"db_profiles": db_profiles, "db_orders": db_orders, "db_positions": db_positions,
              "db_trade_slices": db_trade_slices, "exchange_open_orders": exchange_open_orders,
              "exchange_positions": exchange_positions}
    stamps = frame_stamps(frames)
    problems = evidence_problems(stamps, pd.Timestamp.now(tz="UTC").to_pydatetime(),
                                 settings.evidence_max_age_seconds,
                                 settings.evidence_max_apart_seconds)
    if problems:
        raise dg.Failure(f"no diff of {context.partition_key} from this evidence: "
                         + "; ".join(problems),
                         metadata={"snapshots": dg.MetadataValue.md(pd.DataFrame(
                             [s.__dict__ for s in stamps]).to_markdown(index=False))})
    diff = compute_diff(
        profiles=db_profiles, db_orders=db_orders, db_positions=db_positions,
        db_trade_slices=db_trade_slices, exchange_open_orders=exchange_open_orders,
        exchange_positions=exchange_positions, cycle_id=cycle_id,
        db_read_at=pd.Timestamp(db_profiles.attrs["read_at"]),
        recency_guard_s=settings.recency_guard_seconds,
        new_order_grace_s=settings.new_order_grace_seconds)
    evidence = {
        "db_read_at": min(s.read_at for s in stamps if s.side == "database").isoformat(),
        "exchange_read_at": min(s.read_at for s in stamps if s.side == "exchange").isoformat(),
        "db_run_id": db_profiles.attrs["run_id"],
        "exchange_run_id": exchange_open_orders.attrs["run_id"],
    }
    recorded = ReconStore(database).record_cycle(
        cycle_id, context.partition_key, _run_start(context), mismatch_records(diff),
        {**evidence, "not_fully_checked": diff.attrs.get("not_fully_checked") or {}})
    context.log.info(f"cycle {cycle_id} on {context.partition_key}: {len(diff)} mismatches "
                     f"({recorded} newly recorded in recon.mismatches) from the evidence of "
                     f"{evidence_time(stamps).isoformat()}")
    return dg.Output(diff, metadata={**diff_metadata(diff, cycle_id), **evidence,
                                     "not_fully_checked": diff.attrs.get("not_fully_checked")
                                     or {}})
