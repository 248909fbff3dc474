"""The EXIT backfill's candidates: real exchange fills that prove exits the database never
recorded, each decided GO or NO_GO by the runbook's attribution gates (`core.backfill`)."""

import dagster as dg
import pandas as pd

from recon_assets.core.backfill import BackfillPolicy, exit_backfill_decisions
from recon_assets.core.cycle import evidence_problems, frame_stamps
from recon_assets.core.frames import json_records
from recon_assets.core.rules import BACKFILL_MATCH_METHODS, GO, NO_GO
from recon_assets.defs.metadata import md_table
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.backfill_store import BackfillStore
from recon_assets.resources.database import TradingStore
from recon_assets.resources.recon_store import ReconStore
from recon_assets.settings import ReconSettings
from recon_assets.defs.runs import cycle_id_of

SHOWN_COLUMNS = ["decision", "match_mode", "profile_id", "trade_id", "slice_no", "symbol",
                 "exchange_fill_id", "client_order_id", "fill_side", "fill_qty", "fill_price",
                 "fee_usd", "filled_at", "reason"]


def backfill_policy(settings: ReconSettings) -> BackfillPolicy:
    return BackfillPolicy(settings.exit_backfill_require_strong_attribution,
                          settings.exit_backfill_allow_heuristic_match,
                          settings.exit_backfill_fill_after_trade_grace_minutes)


@dg.asset(partitions_def=exchange_account_partitions, group_name="backfill",
          kinds={"pandas", "postgres"}, deps=["reconciliation_diff"])
def exit_backfill_candidates(context: dg.AssetExecutionContext, settings: ReconSettings,
                             database: TradingStore, db_profiles: pd.DataFrame,
                             db_orders: pd.DataFrame, db_trade_slices: pd.DataFrame,
                             exchange_positions: pd.DataFrame,
                             exchange_fills: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Real exchange fills that prove exits the database never recorded, each decided GO or NO_GO by the runbook's attribution gates; the exit_backfill job books the GO ones."""
    account, cycle_id = context.partition_key, cycle_id_of(context.run)
    if not ReconStore(database).cycle_succeeded(cycle_id, account):
        raise dg.Failure(f"the EXIT backfill looks at a cycle: run {cycle_id} recorded no "
                         f"succeeded cycle of {account}; materialize it with reconciliation_diff")
    frames = {"db_profiles": db_profiles, "db_orders": db_orders,
              "db_trade_slices": db_trade_slices, "exchange_positions": exchange_positions,
              "exchange_fills": exchange_fills}
    problems = evidence_problems(frame_stamps(frames), pd.Timestamp.now(tz="UTC").to_pydatetime(),
                                 settings.evidence_max_age_seconds,
                                 settings.evidence_max_apart_seconds)
    if problems:
        raise dg.Failure(f"no EXIT backfill of {account} from this evidence: " + "; ".join(problems))
    store = BackfillStore(database)
    state = store.matching_state(account, exchange_fills)
    policy = backfill_policy(settings)
    result = exit_backfill_decisions(
        cycle_id=cycle_id, account=account, slices=db_trade_slices, profiles=db_profiles,
        orders=db_orders, exchange_positions=exchange_positions, fills=exchange_fills,
        policy=policy, booked=state["booked"], hints=state["hints"], reviews=state["reviews"],
        db_read_at=pd.Timestamp(db_trade_slices.attrs["read_at"]),
        recency_guard_s=settings.recency_guard_seconds)
    decisions = result.decisions
    recorded = store.record_decisions(cycle_id, account, json_records(decisions),
                                      settings.position_parity_dry_run, context.run.run_id)
    counts = decisions["decision"].value_counts()
    methods = decisions["match_mode"].value_counts()
    go = decisions[decisions["decision"] == GO]
    context.log.info(f"EXIT backfill of {account}: {len(result.shortfalls)} shortfall(s), "
                     f"{len(decisions)} candidate fill(s): {dict(counts)}; recorded {recorded}")
    return dg.Output(decisions, metadata={
        "cycle_id": cycle_id, "dagster/row_count": len(decisions),
        "decision/GO": int(counts.get(GO, 0)), "decision/NO_GO": int(counts.get(NO_GO, 0)),
        **{f"method/{m}": int(methods.get(m, 0)) for m in BACKFILL_MATCH_METHODS},
        "go_notional_usd": round(float((go["fill_qty"] * go["fill_price"]).sum()), 2),
        "profiles_with_go": sorted(go["profile_id"].dropna().unique().tolist()),
        "require_strong_attribution": policy.require_strong_attribution,
        "allow_heuristic_match": policy.allow_heuristic_match,
        "grace_minutes": float(policy.grace_minutes),
        "fills_left_to_lifecycle_correction": len(result.left_to_lifecycle),
        "fills_held_recent": len(result.held_recent),
        "slices_held_recent": len(result.held_slices),
        "decisions": md_table(decisions[SHOWN_COLUMNS], "_no candidate exit fill: every open "
                                                        "slice's exits are in the database_"),
        "shortfalls": md_table(result.shortfalls, "_no open slice claims more than the exchange "
                                                  "holds_"),
    })
