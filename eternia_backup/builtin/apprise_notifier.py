"""Built-in notifier ``apprise``: the long tail (Slack, ntfy, email, PagerDuty, ...) through apprise.

Needs the optional ``apprise`` package (``pip install 'eternia-backup[apprise]'``);
the config names the missing package otherwise. Every URL is checked when the
configuration is loaded (``config check``), and never shown: apprise URLs hold
tokens. Each event is one notification whose type follows the status (start:
info, success, warning, failure) and whose body is the event's message.
"""

from __future__ import annotations

import logging

from eternia_backup.api import ConfigError, RedactingFilter
from eternia_backup.builtin.notifying import Event, Notifier

TYPES = {"start": "info", "success": "success", "warning": "warning", "failure": "failure"}


class AppriseNotifier(Notifier):
    """One ``notify.apprise`` entry: its URLs get every event it asks for."""

    def __init__(self, spec, config) -> None:
        super().__init__(spec, config)
        try:
            import apprise
        except ImportError:
            raise ConfigError(f"{spec.key}: needs the apprise package; install it with "
                              "`pip install 'eternia-backup[apprise]'`") from None
        apprise_logger = logging.getLogger("apprise")
        if not any(isinstance(f, RedactingFilter) for f in apprise_logger.filters):
            apprise_logger.addFilter(RedactingFilter())
        self.apprise = apprise.Apprise()
        for i, url in enumerate(spec.urls):
            if not self.apprise.add(url):
                scheme = url.split("://", 1)[0] if "://" in url else ""
                raise ConfigError(f"{spec.key}.urls[{i}]: apprise cannot use this URL"
                                  + (f" (scheme {scheme!r})" if scheme and len(scheme) < 20 else "")
                                  + "; see apprise's documentation for the URL of each service")

    def send(self, event: Event) -> None:
        title = f"eternia-backup: {event.operation} {event.status} ({self.app_name}, {self.environment})"
        body = event.message
        if event.status == "failure" and event.log_tail:
            body += "\n\nlast log lines:\n" + "\n".join(event.log_tail.splitlines()[-10:])
        if not self.apprise.notify(title=title, body=body, notify_type=TYPES[event.status]):
            raise OSError("apprise could not send it to every URL (its log says why)")
