"""The escalation sensor: the runbook's "When to escalate", raised once each, sent to a webhook."""

import json

import dagster as dg
import pandas as pd

from recon_assets.core.escalation import (MISMATCH_IDENTITY, Alert, failed_cycles,
                                          lock_contention, persistent_mismatches, slack_payload,
                                          unknown_fills)
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.alerts import AlertDeliveryError, AlertWebhook
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.io_manager import load_stored_frame

PERSISTENCE_RUNS = 2  # the runbook: "Mismatch metrics stay elevated after two reconciliation runs"


def _frame(conn, query: str, params: tuple = ()) -> pd.DataFrame:
    cursor = conn.execute(query, params)
    return pd.DataFrame(cursor.fetchall(), columns=[c.name for c in cursor.description])


def find_alerts(database: PostgresStore, accounts: list[str]) -> list[Alert]:
    with database.connect() as conn:
        cycles = _frame(conn, """
            SELECT cycle_id, exchange_account, finished_at FROM (
                SELECT c.*, row_number() OVER (PARTITION BY exchange_account
                                               ORDER BY finished_at DESC) AS n
                FROM recon.cycles c WHERE status = 'succeeded') x
            WHERE n <= %s""", (PERSISTENCE_RUNS,))
        mismatches = _frame(conn, f"""
            SELECT cycle_id, {', '.join(MISMATCH_IDENTITY)}, notional_usd::float AS notional_usd
            FROM recon.mismatches WHERE cycle_id = ANY(%s)""", (list(cycles["cycle_id"]),))
        contention = _frame(conn, """
            SELECT id, profile_id, cycle_id, waited_ms FROM recon.lock_contention
            WHERE observed_at > now() - interval '1 day' ORDER BY id""")
        failed = _frame(conn, """
            SELECT cycle_id, exchange_account, error FROM recon.cycles
            WHERE status = 'failed' AND finished_at > now() - interval '1 day' ORDER BY finished_at""")
    alerts = (persistent_mismatches(mismatches, cycles, PERSISTENCE_RUNS)
              + lock_contention(contention) + failed_cycles(failed))
    for account in accounts:
        fills = load_stored_frame(database, "exchange_fills", account)
        if fills is not None and len(fills):
            alerts += unknown_fills(fills, _known_order_ids(database, fills), account)
    return alerts


def _known_order_ids(database: PostgresStore, fills: pd.DataFrame) -> set[str]:
    """Which of the fills' order ids (client or exchange) the database has: looked up by those
    ids only, not by reading the whole, ever-growing orders table every tick."""
    ids = sorted({str(v) for v in pd.concat([fills["client_order_id"], fills["exchange_order_id"]])
                  .dropna()})
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT client_order_id, exchange_order_id FROM orders "
            "WHERE client_order_id = ANY(%s) OR exchange_order_id = ANY(%s)", (ids, ids)).fetchall()
    return {str(v) for r in rows for v in r.values() if v is not None}


def raise_alert(database: PostgresStore, webhook: AlertWebhook, alert: Alert) -> tuple[bool, str | None]:
    """Record the alert once (dedup key) and deliver it; (is_new, delivery error or None)."""
    with database.connect() as conn:
        inserted = conn.execute(
            """INSERT INTO recon.alerts (dedup_key, reason, exchange_account, profile_id, summary, details)
               VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (dedup_key) DO NOTHING RETURNING id""",
            (alert.dedup_key, alert.reason, alert.exchange_account, alert.profile_id,
             alert.summary, json.dumps(alert.details))).fetchone()
    if inserted is None:
        return False, None
    error = None
    try:
        webhook.post(slack_payload(alert))
    except AlertDeliveryError as exc:
        error = str(exc)
    if webhook.enabled:  # without a webhook an alert is only recorded: delivered_at stays null
        with database.connect() as conn:
            conn.execute("UPDATE recon.alerts SET delivered_at = CASE WHEN %s::text IS NULL THEN now() END, "
                         "delivery_error = %s WHERE id = %s", (error, error, inserted["id"]))
    return True, error


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Escalates as the runbook says (mismatches persisting after two runs, lock "
                       "contention, unknown fills) and on failed cycles: records each alert once "
                       "in recon.alerts and posts it to the alert webhook.")
def escalation_sensor(context: dg.SensorEvaluationContext, database: PostgresStore,
                      alert_webhook: AlertWebhook):
    accounts = context.instance.get_dynamic_partitions(exchange_account_partitions.name)
    events = []
    for alert in find_alerts(database, sorted(accounts)):
        is_new, error = raise_alert(database, alert_webhook, alert)
        if not is_new:
            continue
        context.log.warning(f"ALERT {alert.reason}: {alert.summary}"
                            + (f" (delivery failed: {error})" if error else ""))
        if alert.exchange_account in accounts:
            # Shown on the diff's timeline in the UI, next to the cycles that caused it.
            events.append(dg.AssetObservation(
                asset_key="reconciliation_diff", partition=alert.exchange_account,
                metadata={"alert": alert.reason, "summary": alert.summary,
                          "dedup_key": alert.dedup_key, "delivered": error is None}))
    return dg.SensorResult(asset_events=events)
