"""Small filesystem helpers shared by restore plans and sources."""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
from pathlib import Path

log = logging.getLogger("eternia_backup.restore")


def sibling(path: Path, purpose: str) -> Path:
    """A hidden, unique name beside ``path`` (same filesystem, so renames are atomic)."""
    return path.parent / f".{path.name}.eternia-{purpose}-{secrets.token_hex(4)}"


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (fsync the directory); where that is unsupported, nothing."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_tree(path: Path, *, keep_going: bool = False) -> None:
    """Remove a file or tree if it exists, never following symlinks.

    A restored tree may hold read-only directories (0500, 0555, as archived):
    for a user other than root they refuse the removal of what they hold, so
    such a directory inside the tree is opened up (0700) and the removal tried
    again. Nothing outside ``path`` has its mode changed. With ``keep_going``
    (what a finished restore replaced) everything that can go goes, and the
    first failure (an immutable file, a directory of another user) is raised at
    the end: what is left for a person to remove is then as small as it can be.
    """
    path = Path(path)
    top = os.path.abspath(path)
    failures: list[OSError] = []

    def open_up(func, failed, _exc):
        parent = os.path.dirname(os.path.abspath(failed))
        try:
            if parent == top or parent.startswith(top + os.sep):
                os.chmod(parent, 0o700)
            if func is not os.rmdir and os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed, onerror=open_up)
            else:
                func(failed)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not keep_going:
                raise
            failures.append(exc)

    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path, onerror=open_up)
    except FileNotFoundError:
        pass
    if failures:
        raise failures[0]


def why_not_removed(exc: OSError) -> str:
    """``Operation not permitted: /path`` for a failed :func:`remove_tree`, with the usual cause where it is clear."""
    text = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc)
    if exc.errno == errno.EPERM:
        text += " (an immutable or append-only file? see lsattr; chattr -i)"
    elif exc.errno == errno.EACCES:
        text += " (owned by another user? remove it as that user or root)"
    return text


def make_private_dirs(path: Path, mode: int = 0o700) -> None:
    """mkdir -p where every directory created is ``mode`` whatever the umask."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=mode, exist_ok=True)
        os.chmod(p, mode)


def remove_empty_dirs(path: Path) -> None:
    """Remove ``path`` and the directories under it, bottom-up, as far as they are empty."""
    if not path.is_dir() or path.is_symlink():
        return
    for root, dirs, _files in os.walk(path, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2():
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE).

    False when the system or filesystem cannot; then the caller falls back to
    two renames (and the restore journal covers the moment between them).
    """
    import ctypes
    import errno

    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def remove_stale_siblings(path: Path, keep: Path) -> list[Path]:
    """Remove what killed restores left beside ``path`` (staging and replaced trees).

    Only called under the host lock, after any interrupted restore was finished,
    so nothing else can be using them. One that cannot be removed (an immutable
    file in it) is logged and left: it must never stop the restore.
    """
    removed = []
    for purpose in ("restore", "replaced"):
        for p in path.parent.glob(f".{path.name}.eternia-{purpose}-*"):
            if p != keep:
                try:
                    remove_tree(p, keep_going=True)
                except OSError as exc:
                    log.warning("cannot remove %s, left by an earlier restore: %s; remove it by hand",
                                p, why_not_removed(exc))
                    continue
                removed.append(p)
    return removed


def xattr_namespaces_kept() -> tuple[str, ...]:
    """Namespaces of extended attributes a backup keeps: ``user.`` always; as root also
    ``trusted.`` and ``security.`` (only root can read trusted.*). ``system.`` holds ACLs,
    which are not kept (see docs/format.md)."""
    return ("user.", "trusted.", "security.") if os.geteuid() == 0 else ("user.",)


def read_xattrs(target, namespaces: tuple[str, ...]) -> dict[str, bytes]:
    """The extended attributes of an open fd (or a path, not followed) in ``namespaces``.

    A filesystem without xattrs gives ``{}``; other failures raise OSError.
    """
    if not hasattr(os, "listxattr"):  # macOS and BSDs: Python has no xattr calls there
        return {}
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow) if not follow else os.listxattr(target)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            return {}
        raise
    out = {}
    for name in names:
        if name.startswith(namespaces):
            try:
                out[name] = os.getxattr(target, name) if follow else os.getxattr(target, name, follow_symlinks=False)
            except OSError as exc:
                if exc.errno != errno.ENODATA:  # removed between list and get: nothing to keep
                    raise
    return out


def processes_using(path: Path, ignore: list[Path] = ()) -> list[tuple[int, str, str]]:
    """(pid, command, file) of other processes with a file or working directory under ``path``.

    Read from ``/proc/<pid>/fd`` and ``cwd`` (Linux); where there is no /proc, or a
    process's entries cannot be read, nothing is reported for it. Paths under
    ``ignore`` do not count.
    """
    root = os.path.realpath(path)
    skip = [os.path.realpath(p) for p in ignore]
    found = []
    try:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if pid == os.getpid():
            continue
        hit = _first_use_under(pid, root, skip)
        if hit is not None:
            found.append((pid, _command(pid), hit))
    return found


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _first_use_under(pid: int, root: str, skip: list[str]) -> str | None:
    links = [f"/proc/{pid}/cwd"]
    try:
        links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        pass
    for link in links:
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if _under(target, root) and not any(_under(target, s) for s in skip):
            return target
    return None


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def link_tree(src: Path, dst: Path) -> None:
    """Recreate the tree ``src`` at ``dst`` with hard links to the same files (same filesystem).

    Entries already at ``dst`` are kept, so it can be run again after a crash.
    """
    st = os.lstat(src)
    if not os.path.isdir(src) or os.path.islink(src):
        if not os.path.lexists(dst):
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            else:
                os.link(src, dst, follow_symlinks=False)
        return
    if not os.path.lexists(dst):
        os.mkdir(dst, st.st_mode & 0o7777)
        os.chmod(dst, st.st_mode & 0o7777)
    for entry in os.scandir(src):
        link_tree(Path(entry.path), Path(dst) / entry.name)


def mount_points_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo; empty where there is none)."""
    root = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return [root] if os.path.ismount(root) else []
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if _under(point, root):
            found.append(point)
    return sorted(set(found))


def describe_os_error(exc: BaseException) -> str:
    """A short cause for an OSError, without the secret-bearing repr of a URL."""
    from .redact import redact_text

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on device"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, NotADirectoryError):
        return str(exc) or "not a directory"
    text = str(exc) or type(exc).__name__
    return redact_text(text.splitlines()[0][:300])
