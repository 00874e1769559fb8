"""Built-in target: any URL fsspec can open that no other target serves (``memory://``, ``ftp://`` ...).

It serves the protocol ``"*"``: the registry uses it when no plugin registered
the URL's protocol itself. A file is written under a temporary name
(``.<name>.<host>.<pid>.tmp``) and moved to its final name on commit; the
temporary name is removed if anything fails.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from eternia_backup.api import (
    AtomicWrite,
    ConfigError,
    StoredFile,
    Target,
    hookimpl,
    redact_text,
    split_protocol,
    temp_name,
)


class FsspecAtomicWrite(AtomicWrite):
    """Write to a temporary name with fsspec, then move it into place."""

    def __init__(self, target: "FsspecTarget", filename: str):
        self.target = target
        self.final = target.join(filename)
        self.tmp = target.join(temp_name(filename))
        self._file = target.fs.open(self.tmp, "wb")
        self._done = False

    def write(self, data) -> int:
        return self._file.write(data)

    def commit(self) -> None:
        self._file.close()
        self.target.fs.mv(self.tmp, self.final)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        discard = getattr(self._file, "discard", None)  # fsspec's AbstractBufferedFile: never complete on close
        try:
            if discard is not None:
                discard()
            else:
                self._file.close()
        except Exception:
            pass
        try:
            if self.target.fs.exists(self.tmp):
                self.target.fs.rm(self.tmp)
        except Exception:
            pass


class FsspecTarget(Target):
    """A directory of any filesystem fsspec can open; target options are its storage options."""

    protocols = ("*",)

    def __init__(self, name: str, url: str, options: dict[str, Any]):
        super().__init__(name, url, options)
        import fsspec  # only when such a target is configured: it costs start-up time

        self.protocol = split_protocol(url)
        fs_options = {k: v for k, v in options.items() if not k.startswith("eternia_")}
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url, **fs_options)
        except (ImportError, ValueError) as exc:
            hint = " (install eternia-backup[s3])" if self.protocol in ("s3", "s3a") else ""
            raise ConfigError(f"target {name!r}: cannot open {redact_text(url)}: {exc}{hint}") from None
        except TypeError as exc:
            raise ConfigError(f"target {name!r}: invalid storage options: {redact_text(str(exc))}") from None
        self.root = self.root.rstrip("/") or self.root
        self._dir_ready = False

    def join(self, filename: str) -> str:
        return f"{self.root}/{filename}"

    def file_url(self, filename: str) -> str:
        return redact_text(self.fs.unstrip_protocol(self.join(filename)))

    def ensure_dir(self) -> None:
        if self._dir_ready:
            return
        try:
            self.fs.makedirs(self.root, exist_ok=True)
        except Exception as exc:
            raise self.error_for("create the directory", exc) from exc
        self._dir_ready = True

    def check(self) -> None:
        self.ensure_dir()

    def list(self) -> list[StoredFile]:
        try:
            if self.fs.isfile(self.root):
                raise NotADirectoryError(f"{self.display_url} is a file, not a directory; fix the target's URL")
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self.error_for("list", exc) from exc
        files = []
        for e in entries:
            if e.get("type") not in ("file", None):
                continue
            if e["name"].rstrip("/") == self.root.rstrip("/"):
                continue  # the directory itself (SeaweedFS lists an emptied "prefix/" as a key)
            name = e["name"].rstrip("/").rsplit("/", 1)[-1]
            mtime = e.get("mtime") or e.get("LastModified") or e.get("created") or e.get("modify")
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            try:
                mtime = float(mtime) if mtime is not None else None
            except (TypeError, ValueError):
                mtime = None  # a format this store's listing uses that we do not know
            etag = e.get("ETag") or e.get("etag")
            files.append(StoredFile(name, e.get("size"), mtime, str(etag) if etag else None))
        return files

    def open_write(self, filename: str) -> AtomicWrite:
        self.ensure_dir()
        try:
            return FsspecAtomicWrite(self, filename)
        except Exception as exc:
            raise self.error_for("write", exc, filename) from exc

    def open_read(self, filename: str) -> BinaryIO:
        try:
            return self.fs.open(self.join(filename), "rb")
        except Exception as exc:
            raise self.error_for("read", exc, filename) from exc

    def size(self, filename: str) -> int:
        try:
            return int(self.fs.info(self.join(filename))["size"])
        except Exception as exc:
            raise self.error_for("stat", exc, filename) from exc

    def delete(self, filename: str) -> None:
        try:
            # One file, one request whose answer says whether it was deleted:
            # a bulk delete (s3fs's rm) ignores the per-key errors of a 200 reply.
            self.fs.rm_file(self.join(filename))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self.error_for("delete", exc, filename) from exc


@hookimpl
def eternia_register_targets(register):
    register(FsspecTarget)
