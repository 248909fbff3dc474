"""Where escalations go: a webhook that accepts a Slack-compatible JSON payload."""

import json
import urllib.error
import urllib.request

import dagster as dg
from pydantic import Field


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
