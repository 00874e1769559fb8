"""Built-in notifier ``webhook``: POST a JSON event to a URL when a backup fails
(and, with ``on_success: true``, when it succeeds).

Configured as ``notify: {webhook: {url, on_success, timeout_seconds}}``; the
manager registers one instance through the ordinary lifecycle hooks. The body
holds no secret: messages are redacted and URLs lose their passwords. A
notification that cannot be delivered is logged and never fails the backup.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from datetime import datetime, timezone

from eternia_backup.api import __version__, hookimpl, redact_text

log = logging.getLogger("eternia_backup.notify.webhook")


class WebhookNotifier:
    def __init__(self, webhook, config):
        self.webhook = webhook
        self.name = config.name
        self.environment = config.environment

    def _event(self, kind: str, **fields) -> dict:
        return {
            "event": kind,
            "name": self.name,
            "environment": self.environment,
            "host": socket.gethostname(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "framework_version": __version__,
            **fields,
        }

    def post(self, event: dict) -> None:
        body = json.dumps(event).encode()
        request = urllib.request.Request(self.webhook.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": f"eternia-backup/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=self.webhook.timeout_seconds) as response:
                response.read(1024)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("webhook %s: could not deliver %s: %s", redact_text(self.webhook.url), event["event"],
                        redact_text(str(exc)))

    @hookimpl
    def eternia_backup_failed(self, backup_id, error, result):
        copies = [{"target": c.target, "url": redact_text(c.url)} for c in (result.copies if result else [])]
        failures = {k: redact_text(v) for k, v in (result.failures.items() if result else [])}
        self.post(self._event("backup.failed", backup_id=backup_id, error=redact_text(str(error)),
                              copies=copies, failures=failures))

    @hookimpl
    def eternia_backup_succeeded(self, result):
        if not self.webhook.on_success:
            return
        self.post(self._event("backup.succeeded", backup_id=result.backup_id, size=result.size,
                              duration_seconds=round(result.duration, 3), warning_count=result.warning_count,
                              copies=[{"target": c.target, "url": redact_text(c.url)} for c in result.copies]))
