"""The reconciliation summary: every account's latest numbers and every profile's trading gate
in one unpartitioned asset, so the Dagster UI plots one line per account over time (the
partitioned diff's own plots interleave the accounts' cycles into one line)."""

import dagster as dg
import pandas as pd

from recon_assets.defs.metadata import md_table
from recon_assets.metrics.health import HealthUnavailable, load_state
from recon_assets.resources.database import TradingStore

SUMMARY_KEY = dg.AssetKey("reconciliation_summary")
DIFF_KEY = dg.AssetKey("reconciliation_diff")

reconciliation_summary = dg.AssetSpec(
    SUMMARY_KEY, group_name="overview", deps=[DIFF_KEY], kinds={"postgres"},
    description="Every account's latest reconciliation numbers and every profile's trading gate, one series per account, recorded after each cycle.")


def summary_metadata(health: dict) -> dict:
    """Metadata keys `<account>/<number>` (plotted per account) and the two tables."""
    metadata: dict = {"loop_healthy": int(bool(health["reconciliationLoopHealthy"])),
                      "mismatches": int(health["reconciliationMismatchCount"]),
                      "paused_profiles": sum(p["tradingState"] == "paused"
                                             for p in health["profiles"])}
    for a in health["accounts"]:
        name = a["account"]
        metadata.update({
            f"{name}/mismatches": int(a["mismatchCount"]),
            f"{name}/missing_from_exchange": int(a["missingFromExchange"]),
            f"{name}/missing_in_db": int(a["missingInDb"]),
            f"{name}/ghost_trades": int(a["parityMismatchTrades"]),
            f"{name}/notional_at_risk_usd": round(float(a["notionalAtRiskUsd"]), 2),
            f"{name}/loop_healthy": int(bool(a["healthy"])),
        })
    accounts = pd.DataFrame([{
        "account": a["account"], "healthy": a["healthy"], "last cycle": a["lastCycleStatus"],
        "mismatches": a["mismatchCount"], "notional at risk (USD)": a["notionalAtRiskUsd"],
        "by kind": ", ".join(f"{k} {v}" for k, v in a["mismatchesByKind"].items()),
        "why not healthy": a["reason"] or ""} for a in health["accounts"]])
    profiles = pd.DataFrame([{
        "profile": p["profileId"], "account": p["account"], "trading state": p["tradingState"],
        "pause source": p["pauseSource"] or "", "paused at": p["pausedAt"] or "",
        "auto-resume held back by": ", ".join(p["autoResumeHeldBackBy"]),
        "mismatches": sum(p["mismatchesByKind"].values()),
        "notional at risk (USD)": p["notionalAtRiskUsd"]} for p in health["profiles"]])
    metadata["accounts"] = md_table(accounts, "_no account_")
    metadata["profiles"] = md_table(profiles, "_no profile_")
    return metadata


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="After each new reconciliation_diff materialization, records the "
                       "reconciliation_summary: every account's numbers (one plotted series "
                       "per account) and every profile's trading gate.")
def reconciliation_summary_sensor(context: dg.SensorEvaluationContext, database: TradingStore):
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DIFF_KEY, after_storage_id=after), limit=100,
        ascending=True).records
    if not records:
        return dg.SkipReason("no new reconciliation_diff materialization")
    try:
        health = load_state(database).health
    except HealthUnavailable as exc:
        return dg.SkipReason(f"the reconciliation state cannot be read: {exc}")
    return dg.SensorResult(
        asset_events=[dg.AssetMaterialization(asset_key=SUMMARY_KEY,
                                              metadata=summary_metadata(health))],
        cursor=str(records[-1].storage_id))
