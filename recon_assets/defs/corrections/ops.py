"""The lifecycle correction job: route one profile's mismatches through the runbook's handlers.

For every order the cycle found `missing_from_exchange`, one targeted probe (the order by id and
its fills, and the USD price of a non-USD fee asset at each fill's time) feeds the pure decision
(`core.corrections`), and an actionable decision is applied by its SQL handler under the
profile's reconciliation lock, exactly once (idempotency key). An account's probes per cycle are
capped (`ExchangeResource.max_correction_probes`, shared by its profiles' runs): the orders
beyond the cap are reported `deferred` and wait for the next cycle, which takes the orders in
another order (by a digest of the cycle and the order), so none waits for ever.

Each order is its own unit: an order whose decision or handler fails is recorded in
`recon.corrections` (outcome refused or failed, with the reason; the escalation sensor alerts on
it) and the others go on. While the job runs the profile's trading state is `reconciling`, owned
by this run: a second run finds the gate busy and corrects nothing; a gate whose owner is dead
(or older than `settings.reconciling_max_age_seconds`) is taken over. It is restored at the end,
also when the job fails; a run killed outright leaves it to the next cycle's
`cycle_start`.

The job is partitioned by profile: a launch from the Launchpad picks the profile as its
partition, and the run carries the `recon/profile` tag the run queue limits to one.
"""

import dataclasses
import hashlib
import time

import ccxt
import dagster as dg
import pandas as pd

from recon_assets.core.corrections import (ENTRY_FILL, EXIT_FILL, ProbeFailure,
                                           beyond_query_retention, decide_missing_from_exchange,
                                           refusal_of)
from recon_assets.core.rules import ACTIONABLE_KINDS
from recon_assets.defs.apply import (LockContention, ProfileCycleConfig, begin_gate,
                                     call_under_lock, check_partition, end_gate,
                                     profile_partitioned_config, record_refusal, resolve_cycle)
from recon_assets.resources.database import TradingStore
from recon_assets.resources.exchange import ExchangeFetchError, ExchangeResource
from recon_assets.resources.recon_store import ReconStore
from recon_assets.settings import ReconSettings


def _probe_failure(exc: Exception) -> ProbeFailure:
    # ExchangeSession re-raises ccxt errors as ExchangeFetchError, whose text is scrubbed; the
    # ccxt error it replaced (kept as the context) classifies the failure, but its own text may
    # quote the signed request, so the message is the scrubbed one.
    if isinstance(exc, ExchangeFetchError) and exc.__context__ is not None:
        failure = ProbeFailure.from_exception(exc.__context__)
        return dataclasses.replace(
            failure, message=f"{type(exc.__context__).__name__}: {exc}")
    return ProbeFailure.from_exception(exc)


def probe_order(session, order: dict) -> tuple[dict | ProbeFailure, list[dict]]:
    """The one targeted probe: the order by exchange id (else client id), then its fills. An
    order the matching engine does not know may be a conditional one (stop, take-profit): the
    Algo Service is asked for it by client id, and a triggered one is followed to the regular
    order it became (whose fills are its fills)."""
    symbol = order["symbol"]
    label = f"probe order {order['client_order_id']}"
    try:
        try:
            if order.get("exchange_order_id"):
                probe = session.call(label, session.client.fetch_order,
                                     str(order["exchange_order_id"]), symbol)
            else:
                probe = session.call(label, session.client.fetch_order, None, symbol,
                                     {"origClientOrderId": order["client_order_id"]})
        except ExchangeFetchError as exc:
            if not isinstance(exc.__context__, ccxt.OrderNotFound):
                raise
            probe = session.fetch_conditional_order(order["client_order_id"], symbol, label)
            if probe is None:
                raise
        fills = []
        if float(probe.get("filled") or 0) > 0:
            fills = session.fetch_order_fills(
                str(probe["id"]), symbol, probe.get("timestamp") or order.get("created_at_ms"),
                probe.get("lastUpdateTimestamp"))
    except Exception as exc:  # noqa: BLE001 - any failed probe decides nothing
        failure = _probe_failure(exc)
        if failure.kind == "not_found" and order.get("created_at_ms") is not None:
            beyond = beyond_query_retention(int(order["created_at_ms"]), int(time.time() * 1000),
                                            order.get("filled_qty") or 0)
            failure = dataclasses.replace(failure, beyond_retention=beyond)
        return failure, []
    return probe, fills


def _correct_order(context, database, session, row, cycle_id, run_id, dry_run) -> dict:
    """Probe, decide and apply one order; every failure is recorded, none escapes (but lock
    contention, which ends the profile's turn)."""
    outcome = {"client_order_id": row["client_order_id"], "handler": "none", "reason": "",
               "status": "not_applied", "detail": ""}
    decision = None
    try:
        probe, fills = probe_order(session, row)
        prices = {} if isinstance(probe, ProbeFailure) else session.fee_prices(fills)
        decision = decide_missing_from_exchange(
            row, probe, fills, cycle_id=run_id, dry_run=dry_run, fee_prices=prices,
            evidence={"mismatch_id": row["mismatch_id"], "diff_cycle_id": cycle_id})
        outcome.update(handler=decision.runbook_name or "none", reason=decision.reason,
                       detail=decision.detail)
        if decision.actionable:
            result = call_under_lock(database, decision.sql_function, dict(decision.params),
                                     row["profile_id"], run_id)
            outcome["status"] = (result or {}).get("status", "applied")
    except LockContention:
        raise
    except Exception as exc:  # noqa: BLE001 - one order's failure never stops the others
        refusal = refusal_of(exc)
        handler = (decision.handler if decision is not None and decision.actionable
                   else ENTRY_FILL if row.get("intent") == "ENTRY" else EXIT_FILL)
        record_refusal(context, database, run_id, row["profile_id"], handler, refusal,
                       row.get("trade_id"), row["client_order_id"], dry_run,
                       {"mismatch_id": row["mismatch_id"], "diff_cycle_id": cycle_id,
                        "decision": decision.reason if decision is not None else None,
                        "would_be_idempotency_key": decision.idempotency_key if decision else None})
        outcome.update(status=refusal.outcome, reason=refusal.reason, detail=refusal.message)
    context.log.info(f"{row['client_order_id']}: {outcome['reason']} -> {outcome['status']}")
    return outcome


@dg.op(description="Probes each order of the profile that the cycle found missing from the "
                   "exchange, decides entry fill / exit fill / cancel, and applies it exactly once "
                   "under the profile's reconciliation lock; an order that is refused or fails is "
                   "recorded and escalated, and the others go on.",
       tags={"kind": "postgres"})
def correct_profile(context: dg.OpExecutionContext, config: ProfileCycleConfig,
                    settings: ReconSettings, database: TradingStore,
                    exchange: ExchangeResource) -> dict:
    check_partition(context, config.profile_id)
    cycle = resolve_cycle(database, config.profile_id, config.cycle_id,
                          settings.correction_max_cycle_age_seconds)
    cycle_id, account = cycle["cycle_id"], cycle["exchange_account"]
    store = ReconStore(database)
    rows = store.actionable_mismatches(cycle_id, config.profile_id, ACTIONABLE_KINDS)
    context.log.info(f"profile {config.profile_id} on {account}: {len(rows)} actionable "
                     f"mismatch(es) from cycle {cycle_id}; dry run {settings.position_parity_dry_run}")
    outcomes = []
    if rows:
        profile, run_id = config.profile_id, context.run.run_id
        # Dry run is total: not even the trading state changes; decisions are only recorded.
        dry_run = settings.position_parity_dry_run
        # The probes come out of the account's budget for the cycle, shared with its other
        # profiles' runs: what is not granted waits for the next cycle (issue 39). Taken before
        # the gate, so a failure here leaves the trading state alone. Which orders wait is
        # drawn anew each cycle (a digest of the cycle and the order), so orders that stay
        # missing cycle after cycle (beyond the query retention, say) cannot keep the others
        # from ever being probed; the probed ones keep their order (an entry before its exit).
        granted = store.take_order_probes(account, cycle_id, len(rows),
                                          exchange.max_correction_probes)
        chosen = {r["client_order_id"] for r in sorted(rows, key=lambda r: hashlib.sha256(
            f"{cycle_id}:{r['client_order_id']}".encode()).hexdigest())[:granted]}
        deferred = [r for r in rows if r["client_order_id"] not in chosen]
        rows = [r for r in rows if r["client_order_id"] in chosen]
        if not dry_run:
            begin_gate(context, database, profile, run_id, settings.reconciling_max_age_seconds)
        session = None
        for row in deferred:
            outcomes.append({"client_order_id": row["client_order_id"], "handler": "none",
                             "reason": "probe_cap", "status": "deferred",
                             "detail": f"{account} spent its {exchange.max_correction_probes} "
                                       f"order probes of cycle {cycle_id}: the next cycle "
                                       "looks again"})
        if deferred:
            context.log.warning(f"{len(deferred)} order(s) of {config.profile_id} wait for the "
                                f"next cycle: {account}'s order probes of cycle {cycle_id} are "
                                f"spent ({exchange.max_correction_probes} per cycle)")
        try:
            session = exchange.session(account, database=database)
            for row in rows:
                try:
                    outcomes.append(_correct_order(context, database, session, row, cycle_id,
                                                   run_id, dry_run))
                except LockContention as exc:
                    outcomes.append({"client_order_id": row["client_order_id"], "handler": "",
                                     "reason": "lock_contention", "status": "lock_contention",
                                     "detail": str(exc)})
                    context.log.warning(str(exc))
                    break  # another holder has the profile: leave the rest to the next cycle
        finally:
            if session is not None:
                session.close()
            if not dry_run:
                end_gate(context, database, profile, run_id)
    table = pd.DataFrame(outcomes, columns=["client_order_id", "handler", "reason", "status", "detail"])
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    context.add_output_metadata({
        "profile_id": config.profile_id, "exchange_account": account, "diff_cycle_id": cycle_id,
        "dry_run": settings.position_parity_dry_run,
        "corrections": dg.MetadataValue.md(table.to_markdown(index=False) if len(table) else "_nothing to correct_"),
        **{f"status/{k}": int(v) for k, v in counts.items()},
    })
    if counts.get("lock_contention"):
        raise dg.Failure(f"a lock of {config.profile_id} was busy; the correction(s) left wait "
                         "for the next cycle")
    return {"cycle_id": cycle_id, "outcomes": outcomes}


# A launch for one profile (from the Launchpad, a sensor or a backfill) is one partition: the
# run gets its config and the `recon/profile` tag the run queue allows once at a time.
correction_config = profile_partitioned_config("correct_profile")


@dg.job(description="Lifecycle-safe corrections (reconcileEntryFill, reconcileExitFill, "
                    "reconcileCancel) for one profile, from a reconciliation cycle's mismatches. "
                    "Launch by hand by choosing the profile as the partition: it corrects from "
                    "the profile's latest cycle.",
        config=correction_config, tags={"recon/job": "lifecycle_correction"})
def lifecycle_correction():
    correct_profile()
