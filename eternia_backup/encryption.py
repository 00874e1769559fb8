"""Encryption at rest with age (through pyrage), streaming, before data leaves the machine.

An encrypted archive is a standard age file around the compressed tar
(``<name>-<id>.tar.zst.age``), so ``age -d -i key.txt X.tar.zst.age | zstd -d |
tar -x`` always works.

* ``recipients``: age X25519 public keys (``age1...``); any matching identity
  (``identity_file``, as written by ``age-keygen`` or ``eternia-backup keygen``)
  decrypts.
* ``passphrase``: pyrage encrypts with a passphrase only in memory, so instead
  each backup gets a fresh X25519 identity that is added to the recipients; that
  identity, encrypted with the passphrase (a standard age scrypt file, base64 in
  the manifest's ``encryption.passphrase_identity``), is what the passphrase
  unlocks. By hand: ``jq -r .encryption.passphrase_identity M | base64 -d |
  age -d > key.txt``. Guessing the passphrase is as hard as for an age
  passphrase file (scrypt either way).

The manifest records the scheme and the public recipients; never a private key
in clear and never the passphrase. pyrage's streaming functions pull from a
reader and push to a writer, so the archive stream reaches them through a pipe
and a helper thread.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from .errors import ConfigError, EterniaBackupError, IntegrityError
from .threads import Worker

EXTENSION = ".age"
log = logging.getLogger("eternia_backup.encryption")


class DecryptionError(IntegrityError):
    """The archive could not be decrypted: wrong or missing key, or tampered ciphertext."""


def _pyrage():
    try:
        import pyrage
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigError("backup.encryption: needs pyrage; install eternia-backup[encryption]") from None
    return pyrage


def parse_recipient(text: str, key: str):
    pyrage = _pyrage()
    try:
        return pyrage.x25519.Recipient.from_str(text.strip())
    except Exception:
        shown = text if len(text) < 80 else text[:20] + "..."
        raise ConfigError(f"{key}: expected an age X25519 public key (age1...), got {shown!r}") from None


def read_identities(path: Path) -> list:
    """Identities from an age identity file (``AGE-SECRET-KEY-1...`` lines)."""
    pyrage = _pyrage()
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DecryptionError(f"cannot read the identity file {path}: {exc.strerror}") from None
    identities = []
    for line in lines:
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                identities.append(pyrage.x25519.Identity.from_str(line))
            except Exception:
                raise DecryptionError(f"the identity file {path} holds a malformed key") from None
    if not identities:
        raise DecryptionError(f"the identity file {path} holds no age identity (AGE-SECRET-KEY-1...)")
    return identities


def generate_identity_file(path: Path) -> str:
    """Write a new identity file (0600, never overwriting); return its public recipient."""
    pyrage = _pyrage()
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    text = (f"# created: {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n"
            f"# public key: {public}\n{identity}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return public


@dataclasses.dataclass(frozen=True)
class EncryptionSettings:
    recipients: tuple[str, ...]
    identity_file: Path | None
    passphrase: str | None  # from the environment, typically


class _PipeWriter:
    """Push side of a pipe whose other end a worker thread pulls from."""

    def __init__(self, worker_target, *args):
        rfd, wfd = os.pipe()
        self._w = os.fdopen(wfd, "wb", buffering=0)
        self._r = os.fdopen(rfd, "rb", buffering=1024 * 1024)
        self.error: BaseException | None = None

        def run():
            try:
                worker_target(self._r, *args)
            except BaseException as exc:  # re-raised in the writer's thread
                self.error = exc
            finally:
                self._r.close()  # a writer still writing gets EPIPE, not a hang

        self._thread = Worker(run, name="eternia-age")

    def write(self, data) -> int:
        view = memoryview(data)
        try:
            while view:
                n = self._w.write(view)
                view = view[n:]
        except (BrokenPipeError, ValueError):
            self._thread.join()
            raise self._failure() from None
        return len(data)

    def flush(self) -> None:
        pass

    def _failure(self) -> BaseException:
        if isinstance(self.error, EterniaBackupError):
            return self.error
        return EterniaBackupError(f"encryption failed: {self.error}") if self.error else EterniaBackupError(
            "encryption stopped early")

    def close(self) -> None:
        if not self._w.closed:
            self._w.close()
        self._thread.join()
        if self.error is not None:
            raise self._failure()

    def abort(self) -> None:
        try:
            self._w.close()
        except OSError:
            pass
        self._thread.join(timeout=30)


class Encryptor:
    def __init__(self, settings: EncryptionSettings):
        pyrage = _pyrage()
        self.pyrage = pyrage
        self.settings = settings
        self.recipients = [parse_recipient(r, f"backup.encryption.recipients[{i}]")
                           for i, r in enumerate(settings.recipients)]
        self.record: dict = {"scheme": "age", "recipients": list(settings.recipients)}
        if settings.passphrase:
            ephemeral = pyrage.x25519.Identity.generate()
            self.recipients.append(ephemeral.to_public())
            wrapped = pyrage.passphrase.encrypt(str(ephemeral).encode(), settings.passphrase)
            self.record["passphrase_identity"] = base64.b64encode(wrapped).decode()
            self.record["passphrase_recipient"] = str(ephemeral.to_public())

    def writer(self, inner: IO[bytes]) -> _PipeWriter:
        """A writable stream: what is written comes out age-encrypted into ``inner``."""
        return _PipeWriter(lambda reader: self.pyrage.encrypt_io(reader, inner, self.recipients))


def identities_for(record: dict, settings: EncryptionSettings | None) -> list:
    """Every identity available to decrypt an archive with this manifest record.

    Uses all that work (identity file, passphrase); fails only when none does,
    saying why for each.
    """
    pyrage = _pyrage()
    identities, problems = [], []
    if settings is not None and settings.identity_file is not None:
        try:
            identities.extend(read_identities(settings.identity_file))
        except DecryptionError as exc:
            problems.append(str(exc))
    wrapped = record.get("passphrase_identity")
    if wrapped and settings is not None and settings.passphrase:
        try:
            key = pyrage.passphrase.decrypt(base64.b64decode(wrapped), settings.passphrase)
            identities.append(pyrage.x25519.Identity.from_str(key.decode()))
        except Exception:
            problems.append("the configured passphrase does not open this backup; check encryption.passphrase")
    if identities:
        for problem in problems:
            log.warning("%s (trying the other keys)", problem)
        return identities
    if problems:
        raise DecryptionError("; ".join(problems))
    how = "encryption.identity_file" + (" or encryption.passphrase" if wrapped else "")
    raise NoKeyError(f"the backup is encrypted and no key to open it is configured; set {how}")


class NoKeyError(DecryptionError):
    """No identity or passphrase is configured for an encrypted backup."""


class DecryptingReader:
    """Pull decrypted bytes from an age stream; a worker thread runs pyrage."""

    def __init__(self, raw: IO[bytes], identities: list):
        pyrage = _pyrage()
        rfd, wfd = os.pipe()
        self._r = os.fdopen(rfd, "rb", buffering=1024 * 1024)
        w = os.fdopen(wfd, "wb", buffering=0)
        self.error: BaseException | None = None

        def run():
            try:
                pyrage.decrypt_io(raw, w, identities)
            except BaseException as exc:
                self.error = exc
            finally:
                try:
                    w.close()
                except OSError:
                    pass

        self._thread = Worker(run, name="eternia-age-decrypt")

    def read(self, n: int = -1) -> bytes:
        data = self._r.read(n)
        if not data:
            self._thread.join()
            if self.error is not None:
                raise DecryptionError(
                    "cannot decrypt the archive: wrong key, or the ciphertext was altered "
                    f"({type(self.error).__name__})"
                ) from None
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        try:
            self._r.close()
        except OSError:
            pass
        self._thread.join(timeout=30)
