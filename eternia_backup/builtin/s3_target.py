"""Built-in target for S3 and S3-compatible stores (``s3://bucket/prefix``), through s3fs.

On top of the generic fsspec target it:

* uploads archives as uncommitted multipart uploads (``autocommit=False``) that
  become an object only on commit, and are aborted on any failure, so a failed
  or interrupted upload never leaves an object under the final name (the s3fs
  trap of closing a file after an exception does not apply);
* uploads the parts in background threads while the archive is being made,
  :data:`PARTS_AT_ONCE` at a time (memory is bounded: that many parts and the
  one being filled);
* grows the part size as parts accumulate (8 MiB, doubling every 1,000 parts),
  so memory stays small for small archives and any archive up to S3's 5 TiB
  limit fits in 10,000 parts;
* checks the archive's size on the server (``head_object``) before the manifest
  is written;
* never creates a bucket unless ``create_bucket`` was set, and says so;
* lists and aborts multipart uploads left by killed processes (cleanup): an
  upload's creator is recorded in a marker object ``.<archive>.<host>.<pid>.tmp``
  written before the upload starts and removed when it ends (S3 cannot list an
  unfinished upload's metadata), so cleanup can abort an upload whose creator
  on this host is dead at once, as it removes local temporary files;
* bounds every wait: ``connect_timeout``, ``read_timeout`` and ``max_attempts``
  (target options, or ``cloud_backup`` keys) with defaults that make an endpoint
  which never answers fail an operation in about a minute; each retry is logged
  at WARNING naming the endpoint and the attempt. botocore does the retrying;
  s3fs's own retry loop (5 more rounds on top) is turned off;
* deletes one key per request, so a refused delete is an error, not a silent
  per-key entry in a 200 answer to DeleteObjects;
* checks bucket names by S3's naming rules when the config is loaded;
* turns botocore errors into one line that says what to check: which credential
  source is in use and which permission the failed action needs.

Credentials come from the standard AWS chain (environment, profile, IAM role).
"""

from __future__ import annotations

import datetime
import errno
import io
import ipaddress
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from typing import Any

from eternia_backup.api import (
    AtomicWrite,
    BackupNotFoundError,
    ConditionalWrites,
    ConfigError,
    IncompleteUpload,
    StorageError,
    UploadCleanup,
    hookimpl,
    redact_text,
    temp_name,
)
from eternia_backup.builtin.fsspec_target import FsspecTarget

log = logging.getLogger("eternia_backup.target.s3")

MIN_PART = 8 * 2**20
PART_DOUBLING_EVERY = 1000
MAX_PART = 5 * 2**30
MAX_PARTS = 10_000
COMPLETE_ATTEMPTS = 4
#: parts handed to the uploader threads and not yet uploaded: with the part being filled, at
#: most 3 parts are in memory (24 MiB for the first 1,000 parts, 48 MiB for the next 1,000 ...).
#: Uploading 563 MiB to SeaweedFS on loopback: one stream 7.8-10.4 s, two 6.9 s, three 6.8 s.
PARTS_AT_ONCE = 2
READ_BLOCK = 8 * 2**20

# Defaults: an endpoint that accepts connections and never answers fails one
# operation after 3 x 20 s + 2 s + 4 s of backoff, about 66 s, so every command
# (each needs one failed operation to give up on a target) ends within 2 minutes.
# 20 s without a byte is far beyond what a working S3 endpoint takes to answer.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
MAX_ATTEMPTS = 3
RETRY_BASE_DELAY = 2.0

# Permission each action needs, named in "access denied" hints.
_PERMISSION = {
    "list": "s3:ListBucket", "use": "s3:ListBucket", "read": "s3:GetObject", "stat": "s3:GetObject",
    "write": "s3:PutObject", "write to": "s3:PutObject", "commit": "s3:PutObject",
    "delete": "s3:DeleteObject", "create the bucket of": "s3:CreateBucket",
    "list the uploads of": "s3:ListBucketMultipartUploads", "abort an upload of": "s3:AbortMultipartUpload",
}


def bucket_name_problem(name: str) -> str | None:
    """Why ``name`` breaks S3's bucket naming rules, or None when it is valid.

    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html)
    """
    if not 3 <= len(name) <= 63:
        return f"must be 3 to 63 characters long, got {len(name)}"
    if not re.fullmatch(r"[a-z0-9.-]+", name):
        return "may hold only lowercase letters, digits, '.' and '-' (no uppercase, no '_')"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "must begin and end with a letter or digit"
    if ".." in name:
        return "must not contain two adjacent periods"
    try:
        ipaddress.IPv4Address(name)
        return "must not look like an IP address"
    except ValueError:
        pass
    for prefix in ("xn--", "sthree-", "amzn-s3-demo-"):
        if name.startswith(prefix):
            return f"must not begin with {prefix!r} (reserved)"
    for suffix in ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"):
        if name.endswith(suffix):
            return f"must not end with {suffix!r} (reserved)"
    return None


def part_size(parts_done: int) -> int:
    """Size of the next part after ``parts_done`` parts."""
    return min(MIN_PART * 2 ** (parts_done // PART_DOUBLING_EVERY), MAX_PART)


def max_archive_size() -> int:
    return sum(part_size(n) for n in range(MAX_PARTS))


def explain(exc: BaseException, bucket: str, endpoint: str = "the S3 endpoint", *,
            action: str | None = None, credentials: str = "the AWS credential chain",
            create_bucket: bool = False) -> str:
    """One line saying what went wrong with S3 and what to check.

    ``credentials`` names where the credentials came from (the config file's
    options, environment variables, a profile), so the hint points there;
    ``action`` picks the permission named when access is denied.
    """
    text = " ".join(str(e) for e in _chain(exc))
    names = " ".join(type(e).__name__ for e in _chain(exc))
    if "SignatureDoesNotMatch" in text or "signature we calculated does not match" in text:
        return f"the S3 credentials were refused (wrong secret key); check the secret key in {credentials}"
    if "InvalidAccessKeyId" in text or "access key Id you provided does not exist" in text.lower():
        return f"the S3 access key is unknown to the server; check the access key in {credentials}"
    if "NoCredentialsError" in names or "Unable to locate credentials" in text:
        return ("no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "a profile (AWS_PROFILE), or run with an IAM role")
    if "InvalidBucketName" in text:
        return f"the server refuses the bucket name {bucket!r}; {bucket_name_problem(bucket) or 'choose another'}"
    if "NoSuchBucket" in text or "specified bucket does not exist" in text:
        if create_bucket:
            return f"bucket {bucket!r} does not exist yet; the next backup creates it (create_bucket is set)"
        return (f"bucket {bucket!r} does not exist; create it, or set cloud_backup.create_bucket: true "
                "to let eternia-backup create it")
    if "AccessDenied" in text or "Access Denied" in text or isinstance(exc, PermissionError):
        needed = _PERMISSION.get(action or "")
        if needed:
            return (f"access denied on bucket {bucket!r}; the credentials ({credentials}) need {needed} "
                    "there")
        return (f"access denied on bucket {bucket!r}; the credentials ({credentials}) need s3:ListBucket, "
                "s3:GetObject, s3:PutObject and s3:DeleteObject there")
    if any(n in names for n in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                                "ConnectionRefusedError", "ServerDisconnectedError", "ReadTimeoutError",
                                "ConnectionClosedError", "TimeoutError")) \
            or "Could not connect" in text or "Connect call failed" in text or "Read timeout" in text:
        return (f"cannot reach {endpoint} (no answer after retries); check endpoint_url, the network "
                "and that the server is running (connect_timeout, read_timeout and max_attempts bound the wait)")
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


def _retry_reason(response, caught_exception) -> str | None:
    """Why a request should be tried again (no answer, or a server-side error), else None."""
    if caught_exception is not None:
        name = type(caught_exception).__name__
        if "Timeout" in name:
            return f"not answering ({name})"
        if any(n in name for n in ("Connection", "Endpoint", "ClientConnector", "ServerDisconnected")):
            return f"not reachable ({name})"
        return None
    if response is not None:
        status = getattr(response[0], "status_code", None)
        code = ((response[1] or {}).get("Error") or {}).get("Code", "")
        if (status is not None and status >= 500) or code in ("SlowDown", "Throttling", "RequestTimeout"):
            return f"answering with an error ({status} {code})".replace(" )", ")")
    return None


class RetryLogger:
    """botocore ``needs-retry`` handler: our retry policy, with every retry logged at WARNING.

    botocore's own retries are set to one attempt, and s3fs's loop to one round,
    so this is the only retrying and the wait is bounded by ``max_attempts``.
    """

    def __init__(self, endpoint: str, max_attempts: int, base_delay: float = RETRY_BASE_DELAY):
        self.endpoint = endpoint
        self.max_attempts = max_attempts
        self.base_delay = base_delay

    def __call__(self, attempts, response=None, caught_exception=None, operation=None, **kwargs):
        reason = _retry_reason(response, caught_exception)
        if reason is None or attempts >= self.max_attempts:
            return None
        delay = self.base_delay * 2 ** (attempts - 1)
        where = self.endpoint if self.endpoint.startswith("the ") else f"S3 endpoint {self.endpoint}"
        log.warning("%s is %s, retry %d of %d in %g s%s", where, reason, attempts,
                    self.max_attempts - 1, delay, f" ({operation.name})" if operation is not None else "")
        return delay


def _timeouts(options: dict[str, Any]) -> tuple[float, float, int]:
    """connect_timeout, read_timeout, max_attempts from a target's options, checked."""
    values = []
    for key, default, kind in (("connect_timeout", CONNECT_TIMEOUT, float), ("read_timeout", READ_TIMEOUT, float),
                               ("max_attempts", MAX_ATTEMPTS, int)):
        value = options.pop(key, None)
        if value is None:
            values.append(default)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 \
                or (kind is int and int(value) != value):
            expected = "a whole number >= 1" if kind is int else "a number of seconds > 0"
            raise ConfigError(f"S3 target option {key}: expected {expected}, got {value!r}")
        values.append(kind(value))
    return values[0], values[1], values[2]


def _credential_source(options: dict[str, Any]) -> str:
    """Where the credentials come from, in the words a hint should use."""
    if options.get("key") or options.get("secret") or options.get("username"):
        return "the target's options in the config file (key/secret)"
    if options.get("profile") or os.environ.get("AWS_PROFILE"):
        return f"the AWS profile {options.get('profile') or os.environ.get('AWS_PROFILE')!r}"
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    return "the AWS credential chain (profile, config files or IAM role)"


def creator_marker(filename: str) -> bytes:
    """What an upload's marker object holds: who made the upload, for people reading the bucket."""
    return json.dumps({"upload": filename, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.time()}).encode()


def parse_timestamp(value: Any) -> datetime.datetime:
    """botocore's timestamp parser, reading S3's ISO 8601 times with ``fromisoformat``.

    botocore's own goes through dateutil, about 50 us a time: 0.15 s of every listing of
    1,000 backups (three objects each). Anything else (HTTP dates, epoch numbers) goes to it.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    from botocore.utils import parse_timestamp as botocore_parse_timestamp

    return botocore_parse_timestamp(value)


def _part_buffer(size: int) -> io.BytesIO:
    """An empty BytesIO whose buffer already holds ``size`` bytes, so filling it never reallocates
    (growing one by appends copied each 8 MiB part about eight times over)."""
    buffer = io.BytesIO()
    buffer.seek(size - 1)
    buffer.write(b"\0")
    buffer.seek(0)
    return buffer


class S3AtomicWrite(AtomicWrite):
    """An uncommitted multipart upload: an object exists only after commit().

    Driven with raw S3 calls through ``fs.call_s3`` (which adds the target's
    ``s3_additional_kwargs``: storage class, server-side encryption): s3fs's
    file object has no public way to start the upload before the first part
    (so that a missing permission fails before any source is read) nor to grow
    the part size as parts accumulate.

    Parts are uploaded by background threads, :data:`PARTS_AT_ONCE` at a time,
    so the archive is made while parts upload. Memory is bounded: the part being
    filled and at most PARTS_AT_ONCE parts handed over and not yet uploaded
    (write() waits for a slot), so at most 3 parts. A part that fails to upload
    fails the next write() or commit() with its error; abort() stops the threads
    (after the parts in flight) and then aborts the upload.
    """

    def __init__(self, target: "S3Target", filename: str):
        self.target = target
        self.filename = filename
        self.key = target._key(filename)
        self.parts: list[dict[str, Any]] = []  # uploaded (appended by the uploader threads, in any order)
        #: the part being filled: a BytesIO that owns its buffer, so neither botocore nor aiohttp
        #: copies it (aiohttp takes ``getbuffer()``, which copies a BytesIO made from bytes)
        self.buffer = _part_buffer(part_size(0))
        #: uploaded parts' buffers, filled again instead of allocating (and zeroing) new ones
        self._spare: queue.SimpleQueue[io.BytesIO] = queue.SimpleQueue()
        self._done = False
        self._sent = 0  # parts handed to the uploaders
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(PARTS_AT_ONCE)  # parts handed over and not yet uploaded
        self._uploaders: list[threading.Event] = []  # one per uploader thread, set when it has ended
        self._failed: BaseException | None = None
        self._stopping = False
        # The marker first: a crash between it and the upload leaves only a
        # marker, which cleanup removes like any temporary file.
        self.marker = temp_name(filename)
        target.fs.call_s3("put_object", Bucket=target.bucket, Key=target._key(self.marker),
                          Body=creator_marker(filename))
        try:
            out = target.fs.call_s3("create_multipart_upload", Bucket=target.bucket, Key=self.key)
        except BaseException:
            self._remove_marker()
            raise
        self.upload_id = out["UploadId"]

    def _remove_marker(self) -> None:
        try:
            self.target.fs.call_s3("delete_object", Bucket=self.target.bucket, Key=self.target._key(self.marker))
        except Exception as exc:  # cleanup removes it later, as a temporary file
            log.info("target %r: could not remove the upload marker %s: %s", self.target.name, self.marker,
                     self.target.explain(exc, "delete"))

    # -- the uploader threads ---------------------------------------------------------

    def _upload_parts(self, ended: threading.Event) -> None:
        try:
            self._upload_queued()
        finally:
            ended.set()

    def _upload_queued(self) -> None:
        while (item := self._queue.get()) is not None:
            number, data = item
            try:
                if self._failed is None and not self._stopping:
                    out = self.target.fs.call_s3("upload_part", Bucket=self.target.bucket, Key=self.key,
                                                 UploadId=self.upload_id, PartNumber=number, Body=data)
                    self.parts.append({"PartNumber": number, "ETag": out["ETag"]})
                    self._spare.put(data)  # uploaded: botocore is done with it
            except BaseException as exc:  # raised in the writer's thread by the next write() or commit()
                self._failed = exc
            finally:
                del item, data  # a failed part's memory goes before the slot is given back
                self._slots.release()

    def _send(self, data: io.BytesIO) -> None:
        """Hand a part to the uploaders; waits while PARTS_AT_ONCE are not yet uploaded."""
        self._raise_failure()
        number = self._sent + 1
        if number > MAX_PARTS:
            raise StorageError(f"target {self.target.name!r}: {self.filename} is larger than S3 allows "
                               f"({max_archive_size()} bytes in {MAX_PARTS} parts)")
        if not self._uploaders:
            self._uploaders = [threading.Event() for _ in range(PARTS_AT_ONCE)]
            for ended in self._uploaders:
                threading.Thread(target=self._upload_parts, args=(ended,), daemon=True,
                                 name=f"eternia-upload-{self.target.name}").start()
        self._slots.acquire()
        self._queue.put((number, data))
        self._sent = number

    def _raise_failure(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _end_uploaders(self) -> None:
        for _ in self._uploaders:
            self._queue.put(None)
        # Not Thread.join(): on Python 3.11 a join interrupted by Ctrl-C marks the thread as ended,
        # so abort() would then abort the upload under a part still being sent (and leave it stored).
        for ended in self._uploaders:
            ended.wait()
        self._uploaders = []

    def drain(self) -> None:
        """Wait until every part handed to the uploaders is uploaded (or one failed: raised here)."""
        self._end_uploaders()
        self._raise_failure()

    def _stop_uploaders(self) -> None:
        self._stopping = True  # parts still queued are dropped, not uploaded
        self._end_uploaders()  # after the parts in flight: aborting under them might leave them stored

    # -- AtomicWrite --------------------------------------------------------------------

    def write(self, data) -> int:
        """Copies ``data`` into the part being filled (the one copy); a full part goes to the uploaders."""
        self._raise_failure()
        view = memoryview(data).cast("B")
        written = len(view)
        while view:
            room = part_size(self._sent) - self.buffer.tell()
            self.buffer.write(view[:room])
            view = view[room:]
            if self.buffer.tell() >= part_size(self._sent):
                self._send_part()
        return written

    def _send_part(self, last: bool = False) -> None:
        part, self.buffer = self.buffer, io.BytesIO()
        part.truncate(part.tell())  # the last part may be shorter than its buffer
        part.seek(0)
        self._send(part)
        if not last:  # taken once a slot is free: at most PARTS_AT_ONCE + 1 parts in memory
            self.buffer = self._next_buffer(part_size(self._sent))

    def _next_buffer(self, size: int) -> io.BytesIO:
        """An uploaded part's buffer when one of this size is spare, else a new one."""
        try:
            spare = self._spare.get_nowait()
        except queue.Empty:
            return _part_buffer(size)
        if spare.seek(0, io.SEEK_END) != size:  # parts grow every PART_DOUBLING_EVERY parts
            return _part_buffer(size)
        spare.seek(0)
        return spare

    def commit(self) -> None:
        if self.buffer.tell() or not self._sent:
            self._send_part(last=True)  # it may be small (or empty, when it is the only one)
        self.drain()
        self.parts.sort(key=lambda p: p["PartNumber"])
        for attempt in range(COMPLETE_ATTEMPTS):
            try:
                self.target.fs.call_s3("complete_multipart_upload", Bucket=self.target.bucket, Key=self.key,
                                       UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})
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
        self._remove_marker()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self.buffer = io.BytesIO()
        self._stop_uploaders()
        self._spare = queue.SimpleQueue()
        try:
            self.target.fs.call_s3("abort_multipart_upload", Bucket=self.target.bucket, Key=self.key,
                                   UploadId=self.upload_id)
        except Exception as exc:
            log.warning("target %r: could not abort the upload of %s (cleanup will): %s",
                        self.target.name, self.filename, self.target.explain(exc, "abort an upload of"))
            return  # the marker stays: it tells cleanup whose upload this was
        self._remove_marker()


class S3Target(FsspecTarget, ConditionalWrites, UploadCleanup):
    protocols = ("s3", "s3a")
    read_concurrency = 16  # manifests read at once when listing: S3 answers requests in parallel

    def __init__(self, name: str, url: str, options: dict[str, Any]):
        options = dict(options)
        self.create_bucket = bool(options.pop("eternia_create_bucket", False))
        self.connect_timeout, self.read_timeout, self.max_attempts = _timeouts(options)
        options.setdefault("use_listings_cache", False)  # other writers share the bucket
        config_kwargs = dict(options.get("config_kwargs") or {})
        config_kwargs["connect_timeout"] = self.connect_timeout
        config_kwargs["read_timeout"] = self.read_timeout
        config_kwargs["retries"] = {"max_attempts": 1, "mode": "standard"}  # RetryLogger retries
        options["config_kwargs"] = config_kwargs
        self.endpoint = ((options.get("client_kwargs") or {}).get("endpoint_url") or options.get("endpoint_url")
                         or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                         or "the AWS S3 endpoint")
        if self.endpoint.startswith("http://"):
            # Over plain http botocore signs every payload with its sha256, which guards each part
            # already; a CRC32 of the same bytes (botocore's default) would read them once more.
            config_kwargs.setdefault("request_checksum_calculation", "when_required")
        self.credentials = _credential_source(options)
        if "session" not in options:
            options["session"] = self._session(options)
        super().__init__(name, url, options)
        # s3fs's own retry loop (S3FileSystem.retries, a public class attribute with
        # no constructor argument) would repeat botocore's attempts 5 times over.
        self.fs.retries = 1
        self.bucket = self.root.split("/", 1)[0]
        self.prefix = self.root.split("/", 1)[1] if "/" in self.root else ""
        problem = bucket_name_problem(self.bucket)
        if problem:
            raise ConfigError(f"target {name!r}: bucket name {self.bucket!r} in {self.display_url} {problem}")

    def _session(self, options: dict[str, Any]):
        """An aiobotocore session whose clients retry through :class:`RetryLogger`."""
        try:
            from aiobotocore.session import AioSession
        except ImportError:  # reported by FsspecTarget with the install hint
            return None
        session = AioSession(profile=options.get("profile"))
        session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
        session.register("needs-retry.s3", RetryLogger(self.endpoint, self.max_attempts),
                         unique_id="eternia-retry")
        return session

    def explain(self, exc: BaseException, action: str | None = None) -> str:
        return explain(exc, self.bucket, self.endpoint, action=action, credentials=self.credentials,
                       create_bucket=self.create_bucket)

    def error_for(self, action: str, exc: BaseException, filename: str | None = None) -> StorageError:
        where = self.file_url(filename) if filename else self.display_url
        cls = BackupNotFoundError if isinstance(exc, FileNotFoundError) and "bucket" not in str(exc) else StorageError
        return cls(f"target {self.name!r}: cannot {action} {where}: {self.explain(exc, action)}")

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

    def read_bytes(self, filename: str) -> bytes:
        """A small file (a manifest) in one GET (opening it, or a concurrent cat, would HEAD it first)."""
        try:
            return self.fs.cat_file(self.join(filename), max_concurrency=1)
        except Exception as exc:
            raise self.error_for("read", exc, filename) from exc

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

    def delete(self, filename: str) -> None:
        """DeleteObject for one key: a refusal is an error (a bulk delete hides it in a 200)."""
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self._key(filename))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self.error_for("delete", exc, filename) from exc

    def _key(self, filename: str) -> str:
        return f"{self.prefix}/{filename}" if self.prefix else filename

    # -- conditional writes (leases) ------------------------------------------------

    def conditional_put(self, filename, data, *, if_none_match=False, if_match=None):
        self.ensure_dir()  # the lease probe may be the first write: create_bucket applies to it too
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
                                            (key, u["UploadId"]), self._uploaded_size(key, u["UploadId"])))
        return uploads

    def _uploaded_size(self, key: str, upload_id: str) -> int | None:
        """Bytes held by an unfinished upload's parts (what it costs), or None if unknown."""
        try:
            parts = self.fs.call_s3("list_parts", Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            log.info("target %r: cannot list the parts of the upload of %s: %s", self.name, key, self.explain(exc))
            return None
        return sum(int(p.get("Size") or 0) for p in parts.get("Parts") or [])

    def abort_upload(self, upload: IncompleteUpload) -> None:
        key, upload_id = upload.handle
        try:
            self.fs.call_s3("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            raise self.error_for("abort an upload of", exc, upload.name) from exc


@hookimpl
def eternia_register_targets(register):
    register(S3Target)


@hookimpl
def eternia_cloud_backup_target(settings, environment):
    """``cloud_backup`` with ``provider: aws``: ``s3://<bucket>/[<prefix>/]<environment>`` and its options."""
    if settings.get("provider") != "aws":
        return None
    bucket = settings.get("bucket")
    if not bucket:
        raise ConfigError("backup.cloud_backup.bucket: required when cloud_backup.enabled is true; name the S3 bucket")
    problem = bucket_name_problem(bucket)
    if problem:
        raise ConfigError(f"backup.cloud_backup.bucket: {bucket!r} is not a valid S3 bucket name: it {problem}")
    sse = settings.get("server_side_encryption")
    if sse == "aws:kms" and not settings.get("kms_key_id"):
        raise ConfigError("backup.cloud_backup.kms_key_id: required when server_side_encryption is aws:kms")
    parts = [bucket] + [p for p in (settings.get("prefix") or "").strip("/").split("/") if p] + [environment]
    options: dict[str, Any] = {}
    if settings.get("region"):
        options["client_kwargs"] = {"region_name": settings["region"]}
    if settings.get("endpoint_url"):
        options.setdefault("client_kwargs", {})["endpoint_url"] = settings["endpoint_url"]
    extra: dict[str, Any] = {}
    if settings.get("storage_class"):
        extra["StorageClass"] = settings["storage_class"]
    if sse:
        extra["ServerSideEncryption"] = sse
        if settings.get("kms_key_id"):
            extra["SSEKMSKeyId"] = settings["kms_key_id"]
    if extra:
        options["s3_additional_kwargs"] = extra
    if settings.get("create_bucket"):
        options["eternia_create_bucket"] = True
    for key in ("connect_timeout", "read_timeout", "max_attempts"):
        if settings.get(key) is not None:
            options[key] = settings[key]
    return "s3://" + "/".join(parts), options
