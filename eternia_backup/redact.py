"""Keeping secrets out of output: masking config values and log records.

Secrets are recognised by key name (``secret``, ``password``, ``passphrase``,
``token``, ``key`` ...) and by the password part of URLs/DSNs. Every secret value
seen while loading a config is also remembered, and a logging filter replaces
it wherever it would appear in a log line.
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

_known: set[str] = set()
_lock = threading.Lock()


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def remember(value: str) -> None:
    """Treat ``value`` as a secret from now on (in logs and error messages)."""
    if value and len(value) >= 4:
        with _lock:
            _known.add(value)


def redact_text(text: str) -> str:
    """Mask remembered secrets and URL/DSN passwords in free text."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], text)
    text = _DSN_PASSWORD.sub(lambda m: m["head"] + ("'" + MASK + "'" if m["pw"].startswith("'") else MASK), text)
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


def mask(data: Any, key: str = "") -> Any:
    """A copy of a config mapping with secret values masked."""
    if isinstance(data, dict):
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
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = redact_text(str(exc))
            if text != str(exc):
                record.exc_info = None
                record.exc_text = None
                record.msg = f"{record.msg} ({type(exc).__name__}: {text})"
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    logger = logger or logging.getLogger("eternia_backup")
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
