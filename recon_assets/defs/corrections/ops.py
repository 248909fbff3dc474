"""The lifecycle correction job: route one profile's mismatches through the runbook's handlers.

For every order the cycle found `missing_from_exchange`, one targeted probe (the order by id and
its fills) feeds the pure decision (`core.corrections`), and an actionable decision is applied by
its SQL handler under the profile's reconciliation lock, exactly once (idempotency key). While
the job runs the profile's trading state is `reconciling`, so the trading app starts no new
ENTRY/EXIT flow; it is restored at the end, also when the job fails (and a crashed run's state is
restored by the next run's `recon_end_reconciling`).
"""

import time

import dagster as dg
import pandas as pd
import psycopg

from recon_assets.core.corrections import ProbeFailure, decide_missing_from_exchange
from recon_assets.core.rules import ACTIONABLE_KINDS
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.exchange import ExchangeFetchError, ExchangeResource
from recon_assets.resources.recon_store import ReconStore
from recon_assets.resources.trading_tables import TradingTables
from recon_assets.settings import ReconSettings


class LifecycleCorrectionConfig(dg.Config):
    profile_id: str
    cycle_id: str = ""  # empty: the latest succeeded cycle of the profile's account


class StaleCycleError(RuntimeError):
    """The cycle's snapshots are too old to act on."""


def _resolve_cycle(database: PostgresStore, profile_id: str, cycle_id: str, max_age_s: float) -> dict:
    profile = TradingTables(database).profile(profile_id)
    if profile is None:
        raise ValueError(f"unknown profile {profile_id!r}")
    cycle = ReconStore(database).latest_succeeded_cycle(profile["exchange_account"], cycle_id)
    if cycle is None:
        raise ValueError(f"no succeeded reconciliation cycle {cycle_id or ''} for the account "
                         f"{profile['exchange_account']} of profile {profile_id}")
    if float(cycle["age_s"]) > max_age_s:
        raise StaleCycleError(
            f"cycle {cycle['cycle_id']} finished {float(cycle['age_s']):.0f} s ago (bound "
            f"{max_age_s:.0f} s): its snapshots are stale, no correction is made from them")
    return cycle


def _probe_failure(exc: Exception) -> ProbeFailure:
    # ExchangeSession re-raises ccxt errors as ExchangeFetchError (no credentials in the text);
    # the ccxt error it replaced is kept as the context, and that is what classifies the failure.
    original = exc.__context__ if isinstance(exc, ExchangeFetchError) and exc.__context__ else exc
    return ProbeFailure.from_exception(original)


def probe_order(session, order: dict) -> tuple[dict | ProbeFailure, list[dict]]:
    """The one targeted probe: the order by exchange id (else client id), then its fills."""
    symbol = order["symbol"]
    try:
        if order.get("exchange_order_id"):
            probe = session.call(f"probe order {order['client_order_id']}", session.client.fetch_order,
                                 str(order["exchange_order_id"]), symbol)
        else:
            probe = session.call(f"probe order {order['client_order_id']}", session.client.fetch_order,
                                 None, symbol, {"origClientOrderId": order["client_order_id"]})
        fills = []
        if float(probe.get("filled") or 0) > 0:
            fills = session.call(f"probe fills of {order['client_order_id']}",
                                 session.client.fetch_my_trades, symbol, None, None,
                                 {"orderId": probe["id"]})
    except Exception as exc:  # noqa: BLE001 - any failed probe decides nothing
        return _probe_failure(exc), []
    return probe, fills


class LockContention(RuntimeError):
    """Another reconciler held the profile's lock longer than the store's lock_timeout."""


def call_under_lock(database: PostgresStore, function: str, params: dict, profile_id: str,
                    cycle_id: str) -> dict:
    """Call a SQL function that takes the profile's reconciliation lock; a lock wait that times
    out is recorded in recon.lock_contention (the escalation sensor reports it) and raised."""
    started = time.monotonic()
    try:
        return database.call(function, params)
    except psycopg.errors.LockNotAvailable:
        waited_ms = int((time.monotonic() - started) * 1000)
        ReconStore(database).record_lock_contention(profile_id, cycle_id, waited_ms)
        raise LockContention(f"reconciliation lock of profile {profile_id} was busy for "
                             f"{waited_ms} ms; recorded as contention, retried next cycle") from None


@dg.op(description="Probes each order of the profile that the cycle found missing from the "
                   "exchange, decides entry fill / exit fill / cancel, and applies it exactly once "
                   "under the profile's reconciliation lock.",
       tags={"kind": "postgres"})
def correct_profile(context: dg.OpExecutionContext, config: LifecycleCorrectionConfig,
                    settings: ReconSettings, database: PostgresStore,
                    exchange: ExchangeResource) -> dict:
    cycle = _resolve_cycle(database, config.profile_id, config.cycle_id,
                           settings.correction_max_cycle_age_seconds)
    cycle_id, account = cycle["cycle_id"], cycle["exchange_account"]
    rows = ReconStore(database).actionable_mismatches(cycle_id, config.profile_id, ACTIONABLE_KINDS)
    context.log.info(f"profile {config.profile_id} on {account}: {len(rows)} actionable "
                     f"mismatch(es) from cycle {cycle_id}; dry run {settings.position_parity_dry_run}")
    outcomes = []
    if rows:
        profile, run_id = config.profile_id, context.run_id
        # Dry run is total: not even the trading state changes; decisions are only recorded.
        dry_run = settings.position_parity_dry_run
        if not dry_run:
            try:
                call_under_lock(database, "recon_begin_reconciling",
                                {"p_profile_id": profile, "p_cycle_id": run_id}, profile, run_id)
            except LockContention as exc:
                raise dg.Failure(str(exc)) from None
        try:
            session = exchange.session(account)
            for row in rows:
                probe, fills = probe_order(session, row)
                decision = decide_missing_from_exchange(
                    row, probe, fills, cycle_id=run_id, dry_run=dry_run,
                    evidence={"mismatch_id": row["mismatch_id"], "diff_cycle_id": cycle_id})
                outcome = {"client_order_id": row["client_order_id"],
                           "handler": decision.runbook_name or "none", "reason": decision.reason,
                           "status": "not_applied", "detail": decision.detail}
                outcomes.append(outcome)
                if decision.actionable:
                    try:
                        result = call_under_lock(database, decision.sql_function,
                                                 dict(decision.params), profile, run_id)
                        outcome["status"] = (result or {}).get("status", "applied")
                    except LockContention as exc:
                        outcome["status"] = "lock_contention"
                        context.log.warning(str(exc))
                        break  # another reconciler owns the profile: leave the rest to it
                context.log.info(f"{row['client_order_id']}: {decision.reason} -> {outcome['status']}")
        finally:
            try:
                if not dry_run:
                    call_under_lock(database, "recon_end_reconciling",
                                    {"p_profile_id": profile, "p_cycle_id": run_id}, profile, run_id)
            except LockContention as exc:
                context.log.warning(f"{exc}; the next run restores the trading state")
    table = pd.DataFrame(outcomes, columns=["client_order_id", "handler", "reason", "status", "detail"])
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    context.add_output_metadata({
        "profile_id": config.profile_id, "exchange_account": account, "diff_cycle_id": cycle_id,
        "dry_run": settings.position_parity_dry_run,
        "corrections": dg.MetadataValue.md(table.to_markdown(index=False) if len(table) else "_nothing to correct_"),
        **{f"status/{k}": int(v) for k, v in counts.items()},
    })
    if counts.get("lock_contention"):
        raise dg.Failure(f"reconciliation lock of {config.profile_id} was busy; "
                         f"{counts['lock_contention']} correction(s) wait for the next cycle")
    return {"cycle_id": cycle_id, "outcomes": outcomes}


@dg.job(description="Lifecycle-safe corrections (reconcileEntryFill, reconcileExitFill, "
                    "reconcileCancel) for one profile, from a reconciliation cycle's mismatches. "
                    "Launch by hand with the profile id to correct from its latest cycle.",
        tags={"recon/job": "lifecycle_correction"})
def lifecycle_correction():
    correct_profile()
