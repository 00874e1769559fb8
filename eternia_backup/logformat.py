"""Log lines on stderr: text for people, or one JSON object per line for log shippers.

Both carry an ISO-8601 time with its UTC offset. The JSON keys are documented
in docs/monitoring.md ("Logs"); a record's ``extra`` fields and the backup being
made (``backup_id``) are added as keys of their own. Secrets are masked before
a record gets here (:class:`.redact.RedactingFilter` on the handler); what a
formatter adds itself (a traceback, extra fields) is masked here.

A dozen lines of :class:`logging.Formatter` instead of python-json-logger: the
keys are ours to document, and there is no dependency to keep in step.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import datetime, timezone

from . import redact

FORMATS = ("text", "json")

#: the backup being made in this thread (set by backup.run_backup): JSON lines carry it
BACKUP_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("eternia_backup_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_DATEFMT = "%Y-%m-%dT%H:%M:%S%z"  # local time and its offset: unambiguous in any zone

# the attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _clean(value):
    if isinstance(value, str):
        return redact.redact_text(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    return redact.redact_text(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, [exception], [backup_id], extras."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact.redact_text(record.getMessage()),
        }
        if record.exc_info and record.exc_info[1] is not None:
            data["exception"] = redact.redact_text(self.formatException(record.exc_info))
        elif record.exc_text:
            data["exception"] = redact.redact_text(record.exc_text)
        if record.stack_info:
            data["stack"] = redact.redact_text(self.formatStack(record.stack_info))
        backup_id = BACKUP_ID.get()
        if backup_id is not None:
            data["backup_id"] = backup_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in data and not key.startswith("_"):
                data[key] = _clean(value)
        return json.dumps(data, ensure_ascii=False, default=str)


def text_formatter() -> logging.Formatter:
    return logging.Formatter(TEXT_FORMAT, datefmt=TEXT_DATEFMT)


def make_handler(fmt: str, stream) -> logging.Handler:
    """A stderr handler in ``fmt`` (text or json) that masks secrets."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else text_formatter())
    handler.addFilter(redact.RedactingFilter())
    return handler
