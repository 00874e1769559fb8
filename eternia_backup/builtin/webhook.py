"""Built-in notifier ``webhook``: POST a JSON event to a URL.

Configured as ``notify: {webhook: {url, events, operations, timeout_seconds}}``
(one mapping or a list); the older ``on_success: true`` means events
``[success, failure]``. The body is versioned (``version``) and documented in
docs/monitoring.md; it holds no secret: messages are redacted and URLs lose
their passwords. A notification that cannot be delivered is logged and never
fails the operation.
"""

from __future__ import annotations

import json

from eternia_backup.builtin.notifying import Event, Notifier, common_fields, post


class WebhookNotifier(Notifier):
    """One webhook URL; registered by the manager for each ``notify.webhook`` entry."""

    def payload(self, event: Event) -> dict:
        """The JSON body: the common fields, the operation's own, and the log tail of a failure."""
        body = {**common_fields(self, event), **event.fields}
        if event.status == "failure":
            body["log_tail"] = event.log_tail
        return body

    def send(self, event: Event) -> None:
        body = json.dumps(self.payload(event)).encode()
        post(self.spec.urls[0], body, self.spec.timeout_seconds, "application/json")
