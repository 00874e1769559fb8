"""Naming rules every target shares: URL protocols and the temporary-name convention.

A file being written to a target may be visible only under a temporary name,
``.<final name>.<host>.<pid>.tmp`` (:func:`temp_name`). Cleanup recognises such
names (:func:`parse_temp_name`) and removes one whose writer is dead on this
host, or that is older than the grace period. Targets themselves are plugins
(:mod:`eternia_backup.builtin`); nothing here knows a store.
"""

from __future__ import annotations

import os
import socket

from .fsutil import describe_os_error  # noqa: F401  (re-exported for older imports)

TMP_SUFFIX = ".tmp"
FILE_MODE = 0o600
DIR_MODE = 0o700


def split_protocol(url: str) -> str:
    """The URL's protocol, lowercased (``"s3"``); ``"file"`` for a plain path."""
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0].lower()


def temp_name(filename: str) -> str:
    """Temporary name of a file being written: hidden, marked with host and pid."""
    host = socket.gethostname().split(".")[0] or "host"
    return f".{filename}.{host}.{os.getpid()}{TMP_SUFFIX}"


def parse_temp_name(name: str) -> tuple[str, str, int] | None:
    """(final filename, host, pid) of a temporary name, or None."""
    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
        return None
    body = name[1 : -len(TMP_SUFFIX)]
    try:
        rest, pid = body.rsplit(".", 1)
        final, host = rest.rsplit(".", 1)
        return final, host, int(pid)
    except ValueError:
        return None
