"""Where escalations go: a webhook that accepts a Slack-compatible JSON payload, and
`raise_alert`, the one way an alert is recorded (once, by its dedup key) and delivered."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from recon_assets.core.escalation import Alert, after_delivery_attempt, slack_payload
from recon_assets.core.rules import ALERT_NOT_CONFIGURED, ALERT_PENDING
from recon_assets.resources.guard import RunConfigGuard

if TYPE_CHECKING:
    from recon_assets.resources.database import TradingStore


class AlertDeliveryError(RuntimeError):
    """The webhook did not accept an alert (the message never contains the URL: it is a secret)."""


class AlertWebhook(RunConfigGuard, dg.ConfigurableResource):
    """Posts alerts as JSON to a webhook (Slack incoming webhook or compatible)."""

    url: str | None = Field(default=None, description="Set through EnvVar('RECON_ALERT_WEBHOOK_URL'); "
                                                      "unset means alerts are only recorded.")
    timeout_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def post(self, payload: dict) -> None:
        """Post one payload; returns only when the webhook answered 2xx (urllib raises for any
        other status), else raises AlertDeliveryError."""
        if not self.url:
            raise AlertDeliveryError("no alert webhook is configured")
        request = urllib.request.Request(
            self.url, data=json.dumps(payload).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise AlertDeliveryError(f"alert webhook answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AlertDeliveryError(f"alert webhook unreachable: {type(reason).__name__}") from None


def deliver(database: TradingStore, webhook: AlertWebhook,
            alert_ids: list[int] | None = None) -> list[dict]:
    """Post the pending alerts that are due (or those of `alert_ids`), each once per call; record
    each attempt (delivered on 2xx, else retried later with backoff, or given up). Returns one
    {"id", "dedup_key", "status", "error"} per attempt."""
    from recon_assets.resources.recon_store import ReconStore

    store = ReconStore(database)
    attempts = []
    if not webhook.enabled:
        return attempts
    for row in store.alerts_to_deliver(alert_ids):
        alert = Alert(row["dedup_key"], row["reason"], row["summary"], row["exchange_account"],
                      row["profile_id"], row["details"] or {})
        error = None
        try:
            webhook.post(slack_payload(alert))
        except AlertDeliveryError as exc:
            error = str(exc)
        verdict = after_delivery_attempt(int(row["attempts"]) + 1, error is None, row["now"])
        store.record_delivery_attempt(row["id"], verdict.status, error, verdict.next_attempt_at)
        attempts.append({"id": row["id"], "dedup_key": row["dedup_key"],
                         "status": verdict.status, "error": error})
    return attempts


def raise_alert(database: TradingStore, webhook: AlertWebhook,
                alert: Alert) -> tuple[bool, str, str | None]:
    """Record the alert once (its dedup key), then post it: (is_new, delivery status, error).
    The row exists before the post, so a crash in between leaves it pending, and the escalation
    sensor's next tick posts it; a failed post is retried there with backoff."""
    from recon_assets.resources.recon_store import ReconStore

    status = ALERT_PENDING if webhook.enabled else ALERT_NOT_CONFIGURED
    alert_id = ReconStore(database).record_alert(alert.dedup_key, alert.reason,
                                                 alert.exchange_account, alert.profile_id,
                                                 alert.summary, alert.details, status)
    if alert_id is None:
        return False, "", None
    for attempt in deliver(database, webhook, [alert_id]):
        return True, attempt["status"], attempt["error"]
    return True, status, None
