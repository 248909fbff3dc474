"""The EXIT backfill's jobs: `exit_backfill` books one profile's GO decisions of a cycle;
`approve_backfill` / `reject_backfill` are an operator's call on a decision (usually a NO_GO),
recorded, and for an approval applied through the same handler."""

import dagster as dg

from recon_assets.core.rules import APPROVE, EXIT_BACKFILL, GO, REJECT
from recon_assets.defs.apply import (Application, ProfileCycleConfig, apply_each, check_partition,
                                     own_attempts_decisions, profile_partitioned_config,
                                     report_outcomes, resolve_cycle)
from recon_assets.defs.operator_record import record_launch
from recon_assets.resources.backfill_store import BackfillStore
from recon_assets.resources.database import TradingStore
from recon_assets.settings import ReconSettings

OUTCOME_COLUMNS = ["decision_id", "trade_id", "slice_no", "exchange_fill_id", "fill_qty",
                   "fill_price", "fee_usd", "match_mode", "status", "reason"]


def _application(row: dict, profile: str, run_id: str, dry_run: bool, **evidence) -> Application:
    return Application("recon_exit_backfill", {
        "p_profile_id": profile, "p_cycle_id": run_id,
        "p_idempotency_key": row["idempotency_key"], "p_trade_id": row["trade_id"],
        "p_slice_no": row["slice_no"], "p_symbol": row["symbol"],
        "p_exchange_fill_id": row["exchange_fill_id"], "p_dry_run": dry_run,
        "p_decision_id": row["decision_id"],
        "p_evidence": {"decision_id": row["decision_id"], "backfill_cycle_id": row["cycle_id"],
                       "match_mode": row["match_mode"], "rule": row["reason"], **evidence}},
        row["trade_id"], None,
        {"decision_id": row["decision_id"], "slice_no": row["slice_no"],
         "exchange_fill_id": row["exchange_fill_id"],
         "would_be_idempotency_key": row["idempotency_key"]})


def _outcome(row: dict) -> dict:
    return {k: row[k] for k in OUTCOME_COLUMNS if k in row and k != "status"}


@dg.op(description="Books each exit fill the cycle's EXIT backfill decided GO for the profile "
                   "through recon_exit_backfill: the real fill's price, time, fee and id, exactly "
                   "once, under the profile's reconciliation lock.",
       tags={"kind": "postgres"})
def apply_exit_backfill(context: dg.OpExecutionContext, config: ProfileCycleConfig,
                        settings: ReconSettings, database: TradingStore) -> dict:
    check_partition(context, config.profile_id)
    cycle = resolve_cycle(database, config.profile_id, config.cycle_id,
                          settings.correction_max_cycle_age_seconds)
    profile, dry_run = config.profile_id, settings.position_parity_dry_run
    rows, not_mine = own_attempts_decisions(
        context, cycle["cycle_id"], BackfillStore(database).decisions(cycle["cycle_id"], profile, GO))
    if not_mine:
        context.log.warning(not_mine)
    context.log.info(f"profile {profile}: {len(rows)} GO exit fill(s) in cycle "
                     f"{cycle['cycle_id']}; dry run {dry_run}")
    outcomes = apply_each(
        context, database, profile=profile, dry_run=dry_run,
        max_age_s=settings.reconciling_max_age_seconds, handler=EXIT_BACKFILL, rows=rows,
        application=lambda row: _application(row, profile, context.run.run_id, dry_run),
        outcome=_outcome)
    report_outcomes(context, profile, outcomes, OUTCOME_COLUMNS, "exit_fills",
                    "_no GO exit fill to book_",
                    {"profile_id": profile, "backfill_cycle_id": cycle["cycle_id"],
                     "dry_run": dry_run, "not_applied": not_mine or ""})
    return {"cycle_id": cycle["cycle_id"], "outcomes": outcomes}


@dg.job(description="Books the EXIT backfill's GO exit fills of one profile from its latest "
                    "cycle (launch by hand by choosing the profile as the partition).",
        config=profile_partitioned_config("apply_exit_backfill"),
        tags={"recon/job": "exit_backfill"})
def exit_backfill():
    apply_exit_backfill()


class ReviewBackfillConfig(dg.Config):
    decision_id: int  # recon.backfill_decisions.id (the UI's table and the SQL history show it)
    note: str  # why: recorded with the call


def _review(context: dg.OpExecutionContext, database: TradingStore, verdict: str,
            config: ReviewBackfillConfig) -> dict:
    record_launch(context, database)
    try:
        review = BackfillStore(database).review(config.decision_id, verdict, config.note,
                                                context.run.run_id)
    except Exception as exc:  # noqa: BLE001 - the function's own message says what is wrong
        raise dg.Failure(f"{verdict} of backfill decision {config.decision_id} not recorded: "
                         f"{str(exc).splitlines()[0]}") from None
    decision = review["decision"]
    context.log.info(f"backfill decision {config.decision_id} ({decision['exchange_fill_id']} -> "
                     f"{decision['trade_id']}/{decision['slice_no']} of "
                     f"{decision['profile_id']}): {verdict} by review {review['review_id']}: "
                     f"{config.note}")
    return review


@dg.op(description="Records an operator's approval of a backfill decision (the fill and the "
                   "slice it names) and books it through recon_exit_backfill, from the "
                   "account's latest fresh cycle, when that cycle still finds the pair fitting "
                   "(fill not booked, qty within the slice's open qty and the shortfall, inside "
                   "the grace window); otherwise the approval stands and the next cycle's GO "
                   "books it.",
       tags={"kind": "postgres"})
def approve_backfill_op(context: dg.OpExecutionContext, config: ReviewBackfillConfig,
                        settings: ReconSettings, database: TradingStore) -> dict:
    review = _review(context, database, APPROVE, config)
    decision = review["decision"]
    profile, dry_run = decision["profile_id"], settings.position_parity_dry_run
    cycle = resolve_cycle(database, profile, "", settings.correction_max_cycle_age_seconds)
    store = BackfillStore(database)
    current = store.pair_in_cycle(cycle["cycle_id"], decision)
    if current is None or not current["assignable"]:
        why = ("it is no candidate there (booked, or the slice no longer short)" if current is None
               else current["reason"])
        raise dg.Failure(f"approval recorded (review {review['review_id']}), but the latest cycle "
                         f"{cycle['cycle_id']} of {cycle['exchange_account']} does not let the "
                         f"pair be booked: {why}")
    outcomes = apply_each(
        context, database, profile=profile, dry_run=dry_run,
        max_age_s=settings.reconciling_max_age_seconds, handler=EXIT_BACKFILL, rows=[current],
        application=lambda row: _application(row, profile, context.run.run_id, dry_run,
                                             review_id=review["review_id"], note=config.note),
        outcome=_outcome)
    report_outcomes(context, profile, outcomes, OUTCOME_COLUMNS, "exit_fills", "_nothing booked_",
                    {"decision_id": config.decision_id, "review_id": review["review_id"],
                     "profile_id": profile, "note": config.note, "dry_run": dry_run,
                     "backfill_cycle_id": cycle["cycle_id"]})
    if outcomes and outcomes[0]["status"] not in ("applied", "already_applied", "dry_run"):
        raise dg.Failure(f"approval recorded (review {review['review_id']}), but booking it was "
                         f"{outcomes[0]['status']}: {outcomes[0].get('reason')}")
    return {"review_id": review["review_id"], "outcomes": outcomes}


@dg.op(description="Records an operator's rejection of a backfill decision (the fill and the "
                   "slice it names): later cycles keep the pair NO_GO, naming the review.",
       tags={"kind": "postgres"})
def reject_backfill_op(context: dg.OpExecutionContext, config: ReviewBackfillConfig,
                       database: TradingStore) -> dict:
    review = _review(context, database, REJECT, config)
    context.add_output_metadata({"decision_id": config.decision_id,
                                 "review_id": review["review_id"], "note": config.note,
                                 "profile_id": review["decision"]["profile_id"]})
    return review


@dg.job(description="An operator approves an EXIT backfill decision (decision id, note): the "
                    "call is recorded in recon.backfill_reviews and the fill is booked through "
                    "the same handler as a GO.",
        tags={"recon/job": "approve_backfill"})
def approve_backfill():
    approve_backfill_op()


@dg.job(description="An operator rejects an EXIT backfill decision (decision id, note): the "
                    "call is recorded and the pair stays NO_GO.",
        tags={"recon/job": "reject_backfill"})
def reject_backfill():
    reject_backfill_op()
