"""The tar reader's own header parsing gives what tarfile gives, for our archives and GNU tar's.

The reader parses the common members itself (tarfile's per-member work was most
of a restore of many small files) and hands anything unusual back to tarfile;
these tests read the same archives both ways and compare every field.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from eternia_backup.builtin import tar as tar_module
from eternia_backup.builtin.tar import TarArchiver

def make_tree(root: Path) -> Path:
    src = root / "src"
    (src / "dir" / "nested").mkdir(parents=True)
    (src / "empty.txt").write_bytes(b"")
    (src / "small.txt").write_bytes(b"x" * 100)
    (src / "block.bin").write_bytes(os.urandom(512))
    (src / "dir" / "nested" / ("long-name-" * 12 + ".txt")).write_text("a long name")
    (src / "dir" / "ünïcödé ✓.txt").write_text("unicode")
    (src / "dir" / "hard1").write_text("linked")
    os.link(src / "dir" / "hard1", src / "dir" / "hard2")
    os.symlink("../small.txt", src / "dir" / "link")
    os.symlink("x" * 150, src / "dir" / "long-link")
    with open(src / "sparse.bin", "wb") as f:
        f.truncate(4 * 1024 * 1024)
        f.seek(1024 * 1024)
        f.write(b"data in the middle")
    os.utime(src / "small.txt", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    try:
        os.setxattr(src / "small.txt", "user.note", b"hello \xff")
    except OSError:
        pass  # a filesystem without user xattrs: the rest still counts
    return src


def our_archive(src: Path) -> bytes:
    out = io.BytesIO()
    with TarArchiver().writer(out) as w:
        section = w.section("files")
        for dirpath, dirnames, filenames in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            rel = "" if rel == "." else rel
            st = os.lstat(dirpath)
            section.add_directory(rel, mode=st.st_mode, mtime=st.st_mtime, mtime_ns=st.st_mtime_ns)
            for name in sorted(dirnames + filenames):
                path = Path(dirpath) / name
                if path.is_symlink():
                    section.add_symlink(f"{rel}/{name}".lstrip("/"), os.readlink(path), mtime=0)
                elif path.is_file():
                    section.add_file(f"{rel}/{name}".lstrip("/"), path)
    return out.getvalue()


def gnu_tar_archive(src: Path, fmt: str) -> bytes:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    sparse = [] if fmt == "ustar" else ["-S"]  # ustar has no sparse members
    proc = subprocess.run(["tar", f"--format={fmt}", *sparse, "-cf", "-", "-C", str(src), "."], capture_output=True)
    # ustar cannot hold the long names: tar leaves those out, says so and exits 2
    assert proc.returncode in ((0, 2) if fmt == "ustar" else (0,)), proc.stderr
    return proc.stdout


def by_tarfile(data: bytes) -> list[tuple]:
    """(Member, data of a regular file) as tarfile reads them."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as t:
        for info in t:
            f = t.extractfile(info) if info.isreg() else None
            out.append((tar_module._member(info), f.read() if f is not None else None))
    return out


def by_reader(data: bytes, chunk: int | None = None) -> list[tuple]:
    """The same by our reader; ``chunk``: the stream underneath gives at most that many bytes a read."""
    stream = io.BytesIO(data)
    if chunk is not None:
        whole = stream.read

        stream.read = lambda n=-1: whole(chunk if n is None or n < 0 else min(n, chunk))
    reader = TarArchiver().reader(stream)
    out = []
    for member in reader:
        content = None
        if member.kind == "file":
            with reader.open_member(member) as f:
                content = b"".join(iter(lambda: f.read(1000), b""))
        out.append((member, content))
    return out


@pytest.mark.parametrize("fmt", ["ours", "posix", "gnu", "ustar"])
def test_the_reader_sees_what_tarfile_sees(tmp_path, fmt, monkeypatch):
    src = make_tree(tmp_path)
    data = our_archive(src) if fmt == "ours" else gnu_tar_archive(src, fmt)
    parsed: list[str] = []
    monkeypatch.setattr(tar_module, "_PARSED", parsed)
    expected = by_tarfile(data)
    assert by_reader(data) == expected
    if fmt in ("ours", "posix", "ustar"):
        assert len(parsed) >= 8, "the common members should be parsed by the reader itself"
    # headers and data split across the reads of the stream underneath read the same
    assert by_reader(data, chunk=700) == expected
    assert by_reader(data, chunk=1) == expected


def test_a_damaged_header_is_judged_by_tarfile(tmp_path):
    """A bad checksum falls back to tarfile, which decides as it always did.

    (tarfile ends the listing at a bad header after the first; the restore then
    finds the damage by the archive's sha256, tests/test_faults.py.)
    """
    good = our_archive(make_tree(tmp_path))
    bad = bytearray(good)
    with tarfile.open(fileobj=io.BytesIO(good), mode="r:") as t:
        third = t.getmembers()[2].offset
    bad[third + 10] ^= 0x01  # inside that header's name: the checksum no longer matches
    assert by_reader(bytes(bad)) == by_tarfile(bytes(bad))
    assert len(by_reader(bytes(bad))) < len(by_reader(good))
