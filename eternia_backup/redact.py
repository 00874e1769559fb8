"""Keeping secrets out of output: masking config values and log records.

Secrets are recognised by key name (``secret``, ``password``, ``passphrase``,
``token``, ``key`` ...) and by the password part of URLs/DSNs. Every secret value
seen while loading a config is also remembered, and a logging filter replaces
it wherever it would appear in a log line. Importing ``eternia_backup``
installs that masking on the library's loggers (:class:`LibraryLogGuard`), so
an application that only calls ``logging.basicConfig()`` gets it too, not just
the CLI.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "********"

_SECRET_KEY = re.compile(
    r"(secret|password|passwd|passphrase|token|credential|private|(^|_)key$|^key$|api_key|access_key)",
    re.IGNORECASE,
)
# scheme://user:password@host  ->  scheme://user:********@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)(?P<at>@)")
# key=value pairs in libpq DSNs: password=...
# (an unquoted value stops at a quote: the DSN itself may be quoted, and its closing quote must stay)
_DSN_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|[^\s'\"]+)", re.IGNORECASE)

# a password written into a command line: --password=..., --password ..., PGPASSWORD=..., MYSQL_PWD=...
_OPTION_PASSWORD = re.compile(r"(?P<head>--(?:password|passwd|pass)(?:=|\s+))(?P<pw>'[^']*'|\"[^\"]*\"|[^\s'\"]+)",
                              re.IGNORECASE)
_ASSIGNED_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z_]*(?:PASSWORD|PASSWD|PWD|SECRET|TOKEN)[A-Za-z_]*=)(?P<pw>'[^']*'|\"[^\"]*\"|[^\s'\";]+)")

_known: set[str] = set()
_lock = threading.Lock()


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def remember(value: str) -> None:
    """Treat ``value`` as a secret from now on (in logs and error messages)."""
    if value and len(value) >= 4:
        with _lock:
            _known.add(value)


_NOT_SECRET = re.compile(r"^([./~]|[0-9]+$|(true|false|yes|no|on|off)$)", re.IGNORECASE)


def remember_expanded(value: str) -> None:
    """Mask a value the config took from the environment (``${VAR}``) from now on.

    Such values are how passwords reach a command line or a DSN, so they are
    masked in every output, except those that cannot be one and are worth
    seeing in messages: paths, numbers (ports), booleans, and values under 6
    characters.
    """
    if len(value) >= 6 and not _NOT_SECRET.match(value):
        remember(value)


def redact_text(text: str) -> str:
    """Mask remembered secrets and URL/DSN passwords in free text."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], text)
    text = _DSN_PASSWORD.sub(lambda m: m["head"] + ("'" + MASK + "'" if m["pw"].startswith("'") else MASK), text)
    text = _OPTION_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    text = _ASSIGNED_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def find_secrets(data: Any, key: str = "") -> None:
    """Remember every secret-looking value in a config mapping."""
    if isinstance(data, dict):
        for k, v in data.items():
            find_secrets(v, str(k))
    elif isinstance(data, list):
        for v in data:
            find_secrets(v, key)
    elif isinstance(data, str):
        if is_secret_key(key):
            remember(data)
        for m in _URL_PASSWORD.finditer(data):
            remember(m["pw"])
        for m in _DSN_PASSWORD.finditer(data):
            remember(m["pw"].strip("'"))
        for pattern in (_OPTION_PASSWORD, _ASSIGNED_PASSWORD):
            for m in pattern.finditer(data):
                remember(m["pw"].strip("'\""))


def mask(data: Any, key: str = "") -> Any:
    """A copy of a config mapping with secret values masked."""
    if isinstance(data, dict):
        if key == "env":  # what a command's environment holds is a password more often than not
            return {k: MASK if v else v for k, v in data.items()}
        return {k: mask(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [mask(v, key) for v in data]
    if isinstance(data, str):
        if is_secret_key(key) and data:
            return MASK
        return redact_text(data)
    return data


class RedactingFilter(logging.Filter):
    """Masks secrets in log records before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact_text(message)
        if clean != message:  # else msg and args stay apart, for handlers that group by template
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = redact_text(str(exc))
            if text != str(exc):
                record.exc_info = None
                record.exc_text = None
                record.msg = f"{record.msg} ({type(exc).__name__}: {text})"
        return True


class LibraryLogGuard(logging.Handler):
    """Masks every record of the ``eternia_backup.*`` loggers before the application's handlers see it.

    A filter on the ``eternia_backup`` logger would not do: a logger's filters
    only see records logged on that very logger, not those of its children
    (``eternia_backup.backup`` ...) passing through. Handlers do see those, in
    order, from the child up to the root; this one sits first on
    ``eternia_backup`` and masks the record in place, so the handlers after it
    (the application's, on ``eternia_backup`` or the root logger) format the
    masked record. It emits nothing itself; when it is the only handler a
    record meets, the record goes to :data:`logging.lastResort`, as it would
    have without it.
    """

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self._filter = RedactingFilter()

    def handle(self, record: logging.LogRecord) -> bool:
        self._filter.filter(record)
        if not self._others_handle(record):
            last = logging.lastResort
            if last is not None and record.levelno >= last.level:
                last.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # handle() does the work
        pass

    def _others_handle(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            # as Logger.callHandlers counts; a handler marked `observer` (a notifier's log tail) shows nothing
            if any(h is not self and not getattr(h, "observer", False) for h in logger.handlers):
                return True
            logger = logger.parent if logger.propagate else None
        return False


def install_log_guard(logger: logging.Logger | None = None) -> None:
    """Put a :class:`LibraryLogGuard` first on the library's logger (once); done on import."""
    logger = logger or logging.getLogger("eternia_backup")
    if not any(isinstance(h, LibraryLogGuard) for h in logger.handlers):
        logger.handlers.insert(0, LibraryLogGuard())

