"""Built-in target for S3 and S3-compatible stores (``s3://bucket/prefix``), through s3fs.

On top of the generic fsspec target it:

* uploads archives as uncommitted multipart uploads (``autocommit=False``) that
  become an object only on commit, and are aborted on any failure, so a failed
  or interrupted upload never leaves an object under the final name (the s3fs
  trap of closing a file after an exception does not apply);
* grows the part size as parts accumulate (8 MiB, doubling every 1,000 parts),
  so memory stays small for small archives and any archive up to S3's 5 TiB
  limit fits in 10,000 parts;
* checks the archive's size on the server (``head_object``) before the manifest
  is written;
* never creates a bucket unless ``create_bucket`` was set, and says so;
* lists and aborts multipart uploads left by killed processes (cleanup);
* turns botocore errors into one line that says what to check.

Credentials come from the standard AWS chain (environment, profile, IAM role).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Any

from eternia_backup import hookimpl
from eternia_backup.errors import BackupNotFoundError, StorageError
from eternia_backup.providers import AtomicWrite, IncompleteUpload
from eternia_backup.redact import redact_text
from eternia_backup.storage import FsspecTarget

log = logging.getLogger("eternia_backup.target.s3")

MIN_PART = 8 * 2**20
PART_DOUBLING_EVERY = 1000
MAX_PART = 5 * 2**30
MAX_PARTS = 10_000
COMPLETE_ATTEMPTS = 4
READ_BLOCK = 8 * 2**20


def part_size(parts_done: int) -> int:
    """Size of the next part after ``parts_done`` parts."""
    return min(MIN_PART * 2 ** (parts_done // PART_DOUBLING_EVERY), MAX_PART)


def max_archive_size() -> int:
    return sum(part_size(n) for n in range(MAX_PARTS))


def explain(exc: BaseException, bucket: str, endpoint: str = "the S3 endpoint") -> str:
    """One line saying what went wrong with S3 and what to check."""
    text = " ".join(str(e) for e in _chain(exc))
    names = " ".join(type(e).__name__ for e in _chain(exc))
    if "SignatureDoesNotMatch" in text or "signature we calculated does not match" in text:
        return ("the S3 credentials were refused (wrong secret key); check AWS_SECRET_ACCESS_KEY "
                "or the profile in use")
    if "InvalidAccessKeyId" in text or "access key Id you provided does not exist" in text.lower():
        return "the S3 access key is unknown to the server; check AWS_ACCESS_KEY_ID or the profile in use"
    if "NoCredentialsError" in names or "Unable to locate credentials" in text:
        return ("no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "a profile (AWS_PROFILE), or run with an IAM role")
    if "NoSuchBucket" in text or "specified bucket does not exist" in text:
        return (f"bucket {bucket!r} does not exist; create it, or set cloud_backup.create_bucket: true "
                "to let eternia-backup create it")
    if "AccessDenied" in text or "Access Denied" in text or isinstance(exc, PermissionError):
        return (f"access denied on bucket {bucket!r}; the credentials need s3:ListBucket, s3:GetObject, "
                "s3:PutObject and s3:DeleteObject there")
    if any(n in names for n in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                                "ConnectionRefusedError", "ServerDisconnectedError", "ReadTimeoutError")) \
            or "Could not connect" in text or "Connect call failed" in text:
        return (f"cannot reach {endpoint} (retried with backoff); check endpoint_url, the network "
                "and that the server is running")
    return redact_text(str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _internal_error(exc: BaseException) -> bool:
    text = " ".join(str(e) for e in _chain(exc))
    return getattr(exc, "errno", None) == errno.EREMOTEIO or "InternalError" in text or "internal error" in text


def _precondition_failed(exc: BaseException) -> bool:
    text = " ".join(str(e) for e in _chain(exc))
    return "PreconditionFailed" in text or "pre-conditions you specified did not hold" in text


class S3AtomicWrite(AtomicWrite):
    """An uncommitted multipart upload: an object exists only after commit()."""

    def __init__(self, target: "S3Target", filename: str):
        self.target = target
        self.filename = filename
        self._file = target.fs.open(target.join(filename), "wb", autocommit=False, block_size=part_size(0))
        self._done = False
        # Start the multipart upload now (s3fs would at the first full part), so
        # missing write permission fails before any source is read.
        self._file.offset = 0
        self._file._initiate_upload()

    def write(self, data) -> int:
        f = self._file
        if f.parts is not None:
            f.blocksize = part_size(len(f.parts))  # s3fs uploads a part when its buffer reaches blocksize
        return f.write(data)

    def commit(self) -> None:
        self._file.close()  # uploads the last part; nothing is visible yet
        for attempt in range(COMPLETE_ATTEMPTS):
            try:
                self._file.commit()  # complete_multipart_upload
                break
            except OSError as exc:
                # S3 may answer CompleteMultipartUpload with InternalError (even
                # inside a 200); AWS's advice is to retry it, the parts are kept.
                if attempt == COMPLETE_ATTEMPTS - 1 or not _internal_error(exc):
                    raise
                log.info("target %r: completing the upload of %s failed (%s); retrying",
                         self.target.name, self.filename, exc)
                time.sleep(0.5 * 2**attempt)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._file.discard()  # abort the multipart upload; never complete it
        except Exception as exc:
            log.warning("target %r: could not abort the upload of %s (cleanup will): %s",
                        self.target.name, self.filename, explain(exc, self.target.bucket))
        self._file.closed = True


class S3Target(FsspecTarget):
    protocols = ("s3", "s3a")

    def __init__(self, name: str, url: str, options: dict[str, Any]):
        options = dict(options)
        self.create_bucket = bool(options.pop("eternia_create_bucket", False))
        options.setdefault("use_listings_cache", False)  # other writers share the bucket
        config_kwargs = dict(options.get("config_kwargs") or {})
        config_kwargs.setdefault("connect_timeout", 5)
        config_kwargs.setdefault("read_timeout", 60)
        config_kwargs.setdefault("retries", {"max_attempts": 3, "mode": "standard"})
        options["config_kwargs"] = config_kwargs
        super().__init__(name, url, options)
        self.endpoint = ((options.get("client_kwargs") or {}).get("endpoint_url")
                         or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                         or "the AWS S3 endpoint")
        self.bucket = self.root.split("/", 1)[0]
        self.prefix = self.root.split("/", 1)[1] if "/" in self.root else ""

    def error_for(self, action: str, exc: BaseException, filename: str | None = None) -> StorageError:
        where = self.file_url(filename) if filename else self.display_url
        cls = BackupNotFoundError if isinstance(exc, FileNotFoundError) and "bucket" not in str(exc) else StorageError
        return cls(f"target {self.name!r}: cannot {action} {where}: {explain(exc, self.bucket, self.endpoint)}")

    def _check_bucket(self) -> None:
        """head_bucket, and on failure a GET that carries the precise error code.

        A HEAD response has no body, so a wrong secret and a missing permission
        both look like a bare 403 there, and a missing bucket like a bare 404.
        """
        try:
            self.fs.call_s3("head_bucket", Bucket=self.bucket)
        except (PermissionError, FileNotFoundError):
            self.fs.call_s3("list_objects_v2", Bucket=self.bucket, MaxKeys=1)

    def ensure_dir(self) -> None:
        """Check the bucket exists (create it only when asked); S3 has no directories."""
        if self._dir_ready:
            return
        try:
            self._check_bucket()
        except FileNotFoundError as exc:
            if not self.create_bucket:
                raise self.error_for("use", exc) from None
            try:
                self.fs.call_s3("create_bucket", Bucket=self.bucket)
                log.info("target %r: created bucket %s", self.name, self.bucket)
            except Exception as exc2:
                raise self.error_for("create the bucket of", exc2) from exc2
        except Exception as exc:
            raise self.error_for("use", exc) from exc
        self._dir_ready = True

    def list(self):
        self.fs.invalidate_cache(self.root)
        try:
            self._check_bucket()
        except Exception as exc:
            # a missing bucket is a failed listing, not an empty one
            raise self.error_for("list", exc) from exc
        return super().list()

    def open_write(self, filename: str) -> AtomicWrite:
        self.ensure_dir()
        try:
            return S3AtomicWrite(self, filename)
        except Exception as exc:
            raise self.error_for("write", exc, filename) from exc

    def write_bytes(self, filename: str, data: bytes) -> None:
        """Small files (manifests) in one PUT: S3 makes an object appear whole or not at all."""
        self.ensure_dir()
        try:
            self.fs.call_s3("put_object", Bucket=self.bucket, Key=self._key(filename), Body=data)
        except Exception as exc:
            raise self.error_for("write", exc, filename) from exc

    def open_read(self, filename: str):
        try:
            # s3fs reads ahead a whole block (50 MiB by default); a smaller block keeps restores small.
            return self.fs.open(self.join(filename), "rb", block_size=READ_BLOCK)
        except Exception as exc:
            raise self.error_for("read", exc, filename) from exc

    def size(self, filename: str) -> int:
        try:
            head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self._key(filename))
            return int(head["ContentLength"])
        except Exception as exc:
            raise self.error_for("stat", exc, filename) from exc

    def _key(self, filename: str) -> str:
        return f"{self.prefix}/{filename}" if self.prefix else filename

    # -- conditional writes (leases) ------------------------------------------------

    def conditional_put(self, filename, data, *, if_none_match=False, if_match=None):
        kw = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match} if if_match else {}
        try:
            out = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self._key(filename), Body=data, **kw)
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            raise self.error_for("write", exc, filename) from exc
        except Exception as exc:
            raise self.error_for("write", exc, filename) from exc
        return out.get("ETag")

    def read_with_etag(self, filename):
        # head then read: if the object changes in between, a later IfMatch on
        # this ETag fails, which is the safe outcome.
        try:
            head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self._key(filename))
            data = self.fs.cat_file(self.join(filename))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self.error_for("read", exc, filename) from exc
        return data, head.get("ETag")

    def conditional_delete(self, filename, etag):
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self._key(filename), IfMatch=etag)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise self.error_for("delete", exc, filename) from exc
        return True

    def incomplete_uploads(self) -> list[IncompleteUpload]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            out = self.fs.call_s3("list_multipart_uploads", Bucket=self.bucket, Prefix=prefix)
        except Exception as exc:
            raise self.error_for("list the uploads of", exc) from exc
        uploads = []
        for u in out.get("Uploads") or []:
            key = u["Key"]
            if "/" in key[len(prefix):]:
                continue  # another directory's upload
            started = u.get("Initiated")
            uploads.append(IncompleteUpload(key[len(prefix):], started.timestamp() if started else None,
                                            (key, u["UploadId"])))
        return uploads

    def abort_upload(self, upload: IncompleteUpload) -> None:
        key, upload_id = upload.handle
        try:
            self.fs.call_s3("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            raise self.error_for("abort an upload of", exc, upload.name) from exc


@hookimpl
def eternia_register_targets(register):
    register(S3Target)
