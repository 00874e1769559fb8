"""Test helpers for eternia-backup and its plugins (needs the ``test`` extra).

* :class:`SeaweedFS` (with :data:`ADMIN`, :data:`READER`, :func:`weed_binary`,
  :func:`free_ports`): a real S3 server on loopback, see :mod:`.seaweedfs`.
* :class:`.s3proxy.CountingProxy`: counts the S3 requests a command makes.
* The conformance kit (:mod:`.conformance`): pytest base classes a plugin's
  tests subclass, as s3fs subclasses ``fsspec.tests.abstract``:
  :class:`TargetConformance`, :class:`SourceConformance`,
  :class:`ArchiverConformance`, :class:`CompressionConformance`. They are
  imported on first use, so ``SeaweedFS`` alone does not need pytest.
"""

from __future__ import annotations

from .seaweedfs import ADMIN, READER, SeaweedFS, free_ports, weed_binary

_KIT = ("TargetConformance", "SourceConformance", "ArchiverConformance", "CompressionConformance")


def __getattr__(name: str):
    if name in _KIT:
        from . import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module 'eternia_backup.testing' has no attribute {name!r}")


__all__ = ["ADMIN", "READER", "SeaweedFS", "free_ports", "weed_binary", *_KIT]
