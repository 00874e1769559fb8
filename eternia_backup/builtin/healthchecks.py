"""Built-in notifier ``healthchecks``: healthchecks.io-style ping URLs.

``<url>/start`` when a run begins, ``<url>`` when it succeeded (with warnings
too: the body lists them), ``<url>/fail`` when it failed, with this run's last
log lines (redacted, at most 10 KB) as the body, so the check's page shows why.
Services with the same convention (healthchecks.io, self-hosted Healthchecks,
and others) work alike. Only backups ping by default; a drill can ping a check
of its own (``operations: [drill]``).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from eternia_backup.builtin.notifying import Event, Notifier, post

SUFFIX = {"start": "/start", "success": "", "warning": "", "failure": "/fail"}


def ping_url(url: str, status: str) -> str:
    """``url`` with ``/start`` or ``/fail`` added to its path (a query string stays at the end)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + SUFFIX[status]))


class HealthchecksNotifier(Notifier):
    """One ping URL; registered by the manager for each ``notify.healthchecks`` entry."""

    def body(self, event: Event) -> str:
        if event.status == "failure":
            return event.log_tail or event.message
        if event.status == "warning":
            lines = [event.message] + [f"{w.get('source', '')}: {w.get('path', '')}: {w.get('problem', '')}"
                                       for w in event.fields.get("warnings", [])]
            return "\n".join(lines)
        return event.message

    def send(self, event: Event) -> None:
        post(ping_url(self.spec.urls[0], event.status), self.body(event).encode(), self.spec.timeout_seconds,
             "text/plain; charset=utf-8")
