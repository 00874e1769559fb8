"""Small files of a restore made by the system's GNU ``tar``, fed only members already checked.

At 300,000 tiny files a restore is four system calls per file (open, write,
utimes, close); made from Python they cost about as much as GNU tar's whole
extraction, on top of reading the archive. Here Python still reads, decompresses,
hashes and parses the archive and :class:`~eternia_backup.safety.MemberChecker`
still judges every member, but the files are made by a ``tar -x`` per source on
the other core, from a stream this module writes.

Why this is as safe as the Python extractor:

* ``tar`` never sees the archive. It sees headers written here, from the parsed
  and checked :class:`Member`: a relative name inside the source (no ``..``, no
  absolute path, checked by the caller), a regular file or a hard link to an
  earlier regular file of the same source, and nothing else (no symlinks, devices,
  sparse maps, xattrs, global headers or GNU extensions), so a parser difference
  between ours and tar's cannot be exploited.
* Everything lands in the staging directory, and the staging directory holds no
  symlink while ``tar`` runs (the extractor makes them after ``tar`` exited), so
  nothing is written through a link. ``--keep-old-files`` makes a name that
  exists already an error.
* Set-id bits are stripped before the header is written unless the caller kept them.
* The archive's sha256 and the link checks still decide before anything is swapped in.

Used only with GNU tar (``gtar`` or ``tar``), never with ``TAR_OPTIONS`` from the
environment; ``ETERNIA_BACKUP_SYSTEM_TAR=0`` turns it off (the Python extractor
makes every file then).
"""

from __future__ import annotations

import functools
import os
import queue
import shutil
import subprocess
import tarfile
import tempfile

from . import tarheaders
from .errors import RestoreError
from .providers import Member
from .threads import Worker

#: files up to this size may go to tar (larger ones are written by Python, which keeps holes)
MAX_FORWARDED_SIZE = 64 * 1024
#: small files made by Python before tar is started: a restore of a few files spawns no process
START_AFTER = 256
_GATHER = 1024 * 1024  # bytes gathered before they go to the writer thread
_PIPE_SIZE = 1024 * 1024  # asked for the pipe (fewer wake-ups of tar); Linux only
_BLOCK = 512
_IOV_MAX = 1024  # buffers per writev (Linux's and the BSDs' limit)
_NULS = tarheaders.NULS


def disabled_by_environment() -> bool:
    return os.environ.get("ETERNIA_BACKUP_SYSTEM_TAR", "").strip().lower() in ("0", "no", "false", "off")


@functools.lru_cache(maxsize=1)
def gnu_tar() -> str | None:
    """The path of GNU tar on this machine, or None (bsdtar and others are not used)."""
    for name in ("gtar", "tar"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, timeout=10, env=_environment(),
                                 check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if out.startswith(b"tar (GNU tar)"):
            return path
    return None


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TAR_OPTIONS" and not k.startswith("LC_")}
    env["LC_ALL"] = "C"  # messages we can quote, names passed as bytes
    return env


def header_parts(rel: str, kind: bytes, mode: int, uid: int, gid: int, size: int, mtime_ns: int,
                 linkname: str = "") -> tuple[bytes, ...] | None:
    """The header blocks of a regular file (``b"0"``) or hard link (``b"1"``) named ``rel``, as pieces
    to write one after the other: what our archiver writes, pax (an exact mtime, long or non-ASCII
    names) and ustar. None for what is not forwarded: a name that is not UTF-8, a time before 1970."""
    if kind == tarfile.REGTYPE:
        parts = tarheaders.file_header_parts(rel, mode, uid, gid, size, mtime_ns)
        if parts is not None:
            return parts
    if mtime_ns < 0:
        return None
    try:
        rel.encode("utf-8")
        linkname.encode("utf-8")
    except UnicodeEncodeError:  # a name that is not UTF-8 (kept as surrogates): the Python extractor
        return None
    seconds, frac = divmod(mtime_ns, 1_000_000_000)
    records = {"mtime": f"{seconds}.{frac:09d}".rstrip("0")} if frac else {}
    return (tarheaders.member_header(rel, kind, mode, uid, gid, size, seconds, linkname, records),)


class _PipeWriter:
    """Writes what is gathered into tar's stdin from its own thread: while tar is busy and the pipe
    is full, that thread waits, not the one parsing the archive (os.writev lets go of the GIL)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: OSError | None = None
        self.thread = Worker(self._run, name="eternia-tar-feed")

    def send(self, parts: list[bytes]) -> None:
        self.queue.put(parts)

    def close(self) -> None:
        """Wait until everything sent was written, or failed to be."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def _run(self) -> None:
        while (parts := self.queue.get()) is not None:
            if self.error is None:  # after a failure the rest is taken and dropped: nobody waits on a full queue
                try:
                    _write_parts(self.fd, parts)
                except OSError as exc:
                    self.error = exc


def _write_parts(fd: int, parts: list) -> None:
    """All of ``parts`` with as few writev calls as the kernel takes (a pipe may take part of one)."""
    while parts:
        n = os.writev(fd, parts[:_IOV_MAX])
        done = 0
        while done < len(parts) and n >= len(parts[done]):
            n -= len(parts[done])
            done += 1
        parts = parts[done:]
        if n:
            parts[0] = memoryview(parts[0])[n:]


class _TarProcess:
    """One ``tar -x`` into one staging root, reading the stream written to its stdin."""

    def __init__(self, tar: str, root: str, same_owner: bool, where: str = "restore"):
        self.root = root
        self.where = where
        self.errors = tempfile.TemporaryFile(prefix="eternia-tar-")
        args = [tar, "-x", "-f", "-", "-C", root, "--keep-old-files", "--same-permissions", "--numeric-owner",
                "--same-owner" if same_owner else "--no-same-owner", "--warning=no-timestamp",
                "--no-acls", "--no-selinux", "--no-xattrs"]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.errors,
                                     env=_environment(), close_fds=True)
        self.fd = self.proc.stdin.fileno()
        try:
            import fcntl
            fcntl.fcntl(self.fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
        except (ImportError, OSError):
            pass  # the default pipe: slower, not wrong
        self.parts: list[bytes] = []
        self.gathered = 0
        self.writer = _PipeWriter(self.fd)

    def put(self, header: tuple[bytes, ...], data: bytes) -> None:
        """A member: its header pieces, its data and the padding to a whole block."""
        parts = self.parts
        parts += header
        if data:
            parts.append(data)
            if len(data) % _BLOCK:
                parts.append(_NULS[-len(data) % _BLOCK])
        self.gathered += len(data) + 1024  # (headers: one to three blocks)
        if self.gathered >= _GATHER:
            self.flush()

    def flush(self) -> None:
        if self.writer.error is not None:  # tar stopped reading early: its own message says why
            self.finish()
            raise RestoreError(f"{self.where}: the system tar stopped reading the restored files (exit "
                               f"{self.proc.returncode}); nothing was swapped in")  # finish() raised otherwise
        self.writer.send(self.parts)
        self.parts, self.gathered = [], 0

    def finish(self) -> None:
        """End the stream, wait for tar, and raise with its message if it failed."""
        if not self.proc.stdin.closed:
            self.parts.append(bytes(2 * _BLOCK))  # the end of the archive
            self.writer.send(self.parts)
            self.parts = []
            self.writer.close()  # (a broken pipe is tar's to explain: its exit status and message)
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        code = self.proc.wait()
        if code != 0:
            self.errors.seek(0)
            lines = [ln for ln in self.errors.read().decode("utf-8", "replace").splitlines()
                     if ln.strip() and "Exiting with failure status" not in ln]
            self.errors.close()
            said = "; ".join(lines[:3]) + (f" (and {len(lines) - 3} more)" if len(lines) > 3 else "")
            raise RestoreError(f"{self.where}: the system tar failed while making the restored files (exit {code}): "
                               f"{said or 'no message'}; nothing was swapped in, the current state is as it was "
                               "(ETERNIA_BACKUP_SYSTEM_TAR=0 restores without the system tar)")
        self.errors.close()

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.writer.close()  # its write fails now that tar is gone
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()
        self.errors.close()


class TarFeed:
    """Hands small files and hard links of a restore to a GNU ``tar -x`` per staging root.

    The caller (the extractor) has checked every member; it asks :meth:`wants` per small
    file, then :meth:`file` or :meth:`hardlink`, and :meth:`finish` before anything that
    needs the files on disk (appending to one, links, directory modes).
    """

    def __init__(self, *, same_owner: bool, where: str = "restore"):
        self.same_owner = same_owner
        self.where = where
        self.tar = None if disabled_by_environment() else gnu_tar()
        self.procs: dict[str, _TarProcess] = {}
        self.seen = 0  # small files offered so far

    @property
    def usable(self) -> bool:
        return self.tar is not None

    def wants(self) -> bool:
        """True once enough small files went by that a tar process pays for itself."""
        if self.tar is None:
            return False
        self.seen += 1
        return self.seen > START_AFTER

    def file(self, root: str, rel: str, m: Member, mode: int, data: bytes) -> bool:
        """Send a regular file of ``len(data)`` bytes; False when it cannot be sent (the caller writes it)."""
        ns = m.mtime_ns if m.mtime_ns is not None else int(m.mtime * 1_000_000_000)
        head = header_parts(rel, tarfile.REGTYPE, mode, m.uid, m.gid, len(data), ns)
        if head is None:
            return False
        self._proc(root).put(head, data)
        return True

    def hardlink(self, root: str, rel: str, target_rel: str, m: Member) -> bool:
        """A hard link to an earlier file of the same root, made by tar after everything sent before it."""
        ns = m.mtime_ns if m.mtime_ns is not None else int(m.mtime * 1_000_000_000)
        head = header_parts(rel, tarfile.LNKTYPE, m.mode & 0o7777, m.uid, m.gid, 0, ns, target_rel)
        if head is None:
            return False
        self._proc(root).put(head, b"")
        return True

    def active(self, root: str) -> bool:
        return root in self.procs

    def _proc(self, root: str) -> _TarProcess:
        proc = self.procs.get(root)
        if proc is None:
            proc = self.procs[root] = _TarProcess(self.tar, root, self.same_owner, self.where)
        return proc

    def settle(self, root: str) -> None:
        """Wait until tar made everything sent for ``root`` (a later member may start a new tar)."""
        proc = self.procs.pop(root, None)
        if proc is not None:
            proc.finish()

    def finish(self) -> None:
        """Wait for every tar; the first failure is raised after all were waited for."""
        failure = None
        for root in list(self.procs):
            try:
                self.settle(root)
            except RestoreError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def abort(self) -> None:
        """Stop every tar now (the restore failed): the staging directory is thrown away."""
        for proc in self.procs.values():
            proc.kill()
        self.procs.clear()
