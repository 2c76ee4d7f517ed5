"""The alert webhook: one JSON POST per alert, retried with backoff, its URL never shown."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import dagster as dg
from pydantic import Field

#: What the sender says instead of the URL, which is a secret (a Slack webhook's path is its key).
WEBHOOK = "the alert webhook"


class WebhookError(RuntimeError):
    """The webhook did not accept an alert after every attempt; the message never holds its URL."""


class AlertWebhook(dg.ConfigurableResource):
    """POSTs alerts as JSON to `url` (a Slack incoming webhook accepts the body as it is)."""

    url: str = Field(description="The webhook's URL; bind it with dg.EnvVar('ALERT_WEBHOOK_URL').")
    timeout_s: float = Field(default=5.0, gt=0, description="How long one attempt waits for an answer.")
    attempts: int = Field(default=3, ge=1, le=10, description="Attempts per alert within one delivery.")
    backoff_s: float = Field(default=1.0, ge=0, description="The wait before the second attempt; doubled after.")

    def post(self, body: dict[str, Any]) -> int:
        """Deliver `body`; returns the attempts it took. Raises `WebhookError` once every attempt failed."""
        data = json.dumps(body).encode()
        problem = ""
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(
                self.url, data=data, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
                return attempt
            except urllib.error.HTTPError as error:  # the webhook answered, with an error status
                problem = f"{WEBHOOK} answered HTTP {error.code}"
            except (urllib.error.URLError, OSError) as error:  # refused, unresolvable, timed out
                reason = getattr(error, "reason", error)
                problem = f"{WEBHOOK} is unreachable ({type(reason).__name__})"
            if attempt < self.attempts:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise WebhookError(f"{problem} after {self.attempts} attempts")
