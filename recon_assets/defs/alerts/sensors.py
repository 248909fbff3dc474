"""The escalation sensor: the runbook's "When to escalate", raised once each, sent to a webhook."""

import dagster as dg
import pandas as pd

from recon_assets.core.escalation import (Alert, failed_cycles, lock_contention,
                                          persistent_mismatches, refused_corrections,
                                          unknown_fills)
from recon_assets.core.rules import ALERT_DELIVERED, ESCALATION_PERSISTENCE_RUNS
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.alerts import AlertWebhook, deliver, raise_alert
from recon_assets.resources.database import TradingStore
from recon_assets.resources.io_manager import load_stored_frame
from recon_assets.resources.recon_store import ReconStore
from recon_assets.resources.trading_tables import TradingTables


def find_alerts(database: TradingStore, accounts: list[str]) -> tuple[list[Alert], list[str]]:
    """Every escalation due now, and what could not be checked: each rule and each account's
    unknown-fill check runs on its own, so one failure never hides the other alerts."""
    alerts: list[Alert] = []
    problems: list[str] = []

    def attempt(what: str, rule) -> None:
        try:
            alerts.extend(rule())
        except Exception as exc:  # noqa: BLE001 - reported, and the other checks go on
            problems.append(f"{what}: {type(exc).__name__}: {exc}")

    history = ReconStore(database).escalation_history(ESCALATION_PERSISTENCE_RUNS)
    attempt("persistent mismatches", lambda: persistent_mismatches(
        history["mismatches"], history["cycles"], ESCALATION_PERSISTENCE_RUNS,
        dict(zip(history["clean"]["exchange_account"], history["clean"]["cycle_id"]))))
    attempt("lock contention", lambda: lock_contention(history["contention"]))
    attempt("failed cycles", lambda: failed_cycles(history["failed"]))
    attempt("refused corrections", lambda: refused_corrections(history["refused"]))
    for account in accounts:
        attempt(f"unknown fills of {account}", lambda account=account: _unknown_fills(
            database, account))
    return alerts, problems


def _unknown_fills(database: TradingStore, account: str) -> list[Alert]:
    fills = load_stored_frame(database, "exchange_fills", account)
    if fills is None or not len(fills):
        return []
    return unknown_fills(fills, _known_order_ids(database, fills), account)


def _known_order_ids(database: TradingStore, fills: pd.DataFrame) -> set[str]:
    """Which of the fills' order ids (client or exchange) the database has."""
    ids = sorted({str(v) for v in pd.concat([fills["client_order_id"], fills["exchange_order_id"]])
                  .dropna()})
    return TradingTables(database).known_order_ids(ids)


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Escalates as the runbook says (mismatches persisting after two runs, lock "
                       "contention, unknown fills), on failed cycles and on refused or failed "
                       "corrections: records each alert once in recon.alerts and posts it to "
                       "the alert webhook; a failed post is retried on later ticks with backoff.")
def escalation_sensor(context: dg.SensorEvaluationContext, database: TradingStore,
                      alert_webhook: AlertWebhook):
    accounts = context.instance.get_dynamic_partitions(exchange_account_partitions.name)
    events = []
    alerts, problems = find_alerts(database, sorted(accounts))
    for problem in problems:
        context.log.error(f"escalation check failed, the others went on: {problem}")
    for alert in alerts:
        is_new, status, error = raise_alert(database, alert_webhook, alert)
        if not is_new:
            continue
        context.log.warning(f"ALERT {alert.reason}: {alert.summary} (delivery: {status}"
                            + (f", {error})" if error else ")"))
        if alert.exchange_account in accounts:
            # Shown on the diff's timeline in the UI, next to the cycles that caused it.
            events.append(dg.AssetObservation(
                asset_key="reconciliation_diff", partition=alert.exchange_account,
                metadata={"alert": alert.reason, "summary": alert.summary,
                          "dedup_key": alert.dedup_key, "delivery": status,
                          "delivered": status == ALERT_DELIVERED}))
    # Alerts whose post failed before (or whose tick crashed between recording and posting).
    for attempt in deliver(database, alert_webhook):
        context.log.info(f"alert {attempt['dedup_key']} retried: {attempt['status']}"
                         + (f" ({attempt['error']})" if attempt["error"] else ""))
    return dg.SensorResult(asset_events=events)
