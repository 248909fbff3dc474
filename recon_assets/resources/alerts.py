"""Where escalations go: a webhook that accepts a Slack-compatible JSON payload, and
`raise_alert`, the one way an alert is recorded (once, by its dedup key) and delivered."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from recon_assets.core.escalation import Alert, slack_payload

if TYPE_CHECKING:
    from recon_assets.resources.database import PostgresStore


class AlertDeliveryError(RuntimeError):
    """The webhook did not accept an alert (the message never contains the URL: it is a secret)."""


class AlertWebhook(dg.ConfigurableResource):
    """Posts alerts as JSON to a webhook (Slack incoming webhook or compatible)."""

    url: str | None = Field(default=None, description="Set through EnvVar('RECON_ALERT_WEBHOOK_URL'); "
                                                      "unset means alerts are only recorded.")
    timeout_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def post(self, payload: dict) -> None:
        if not self.url:
            return
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


def raise_alert(database: PostgresStore, webhook: AlertWebhook,
                alert: Alert) -> tuple[bool, str | None]:
    """Record the alert once (its dedup key) and deliver it; (is_new, delivery error or None)."""
    from recon_assets.resources.recon_store import ReconStore

    store = ReconStore(database)
    alert_id = store.record_alert(alert.dedup_key, alert.reason, alert.exchange_account,
                                  alert.profile_id, alert.summary, alert.details)
    if alert_id is None:
        return False, None
    error = None
    try:
        webhook.post(slack_payload(alert))
    except AlertDeliveryError as exc:
        error = str(exc)
    if webhook.enabled:  # without a webhook an alert is only recorded: delivered_at stays null
        store.record_alert_delivery(alert_id, error)
    return True, error
