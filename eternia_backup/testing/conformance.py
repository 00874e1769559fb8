"""The conformance kit: pytest base classes that a plugin's tests subclass.

As s3fs reuses ``fsspec.tests.abstract``, a plugin reuses these suites by
subclassing one and providing the fixture its docstring names::

    import pytest
    from eternia_backup.testing import TargetConformance

    class TestMyTarget(TargetConformance):
        @pytest.fixture
        def target(self, tmp_path):
            return MyTarget("kit", f"mystore://{tmp_path}/store", {})

The base classes' names do not start with ``Test``, so pytest collects only the
subclasses. The suites use only the public API (:mod:`eternia_backup.api`,
:class:`~eternia_backup.BackupManager`) and real I/O; each test checks what a
user would see. Class attributes (sizes, what a provider cannot do) can be
overridden; each says what it tunes.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from eternia_backup import BackupManager
from eternia_backup.api import (
    ArchiveError,
    Archiver,
    BackupNotFoundError,
    Cancelled,
    Compression,
    ConditionalWrites,
    EterniaBackupError,
    IntegrityError,
    LocalPaths,
    StorageError,
    Target,
    UploadCleanup,
    parse_temp_name,
)

MiB = 2**20

# A name of the series "kit" that cleanup judges as an archive of that series.
KIT_SERIES = "kit"
KIT_ARCHIVE = f"{KIT_SERIES}-20260101T000000Z-0a1b2c.tar.zst"


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ at every offset (a shifted byte would be seen), cheaply."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * 4096  # 128 KiB
    counter = bytearray()
    n = 0
    while len(counter) < size:
        counter += n.to_bytes(4, "big") + block[: 1020]
        n += 1
    return bytes(counter[:size])


def _names(target: Target) -> list[str]:
    return sorted(f.name for f in target.list())


def _read_all(target: Target, filename: str) -> bytes:
    with target.open_read(filename) as f:
        return f.read()


def _dead_writer_temp_name(final: str) -> str:
    """The temporary name a writer that has exited would have left (its host and its now-dead pid)."""
    out = subprocess.run([sys.executable, "-c", "import sys; from eternia_backup.api import temp_name; "
                          "print(temp_name(sys.argv[1]))", final], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _write_config(directory: Path, section: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "eternia-backup.yaml"
    path.write_text(yaml.safe_dump({"backup": section}))
    return path


# -- targets -----------------------------------------------------------------------


class TargetConformance:
    """The contract of a storage target (:class:`eternia_backup.api.Target`).

    **Fixture to provide:** ``target``, a fresh target instance on an empty
    location (a directory or prefix with nothing under it, which may not exist
    yet). Each test gets its own. The leftover test configures a
    :class:`~eternia_backup.BackupManager` with the target's ``url`` and
    ``options`` (:meth:`target_section`), so the target's class must be
    registered (installed plugin) for that URL; override ``target_section`` if
    the URL alone does not find the same place.

    The optional interfaces are tested when the target offers them
    (``isinstance``): :class:`~eternia_backup.api.LocalPaths`,
    :class:`~eternia_backup.api.ConditionalWrites`,
    :class:`~eternia_backup.api.UploadCleanup`.
    """

    #: bytes of the large-file test, written in ``chunk_size`` pieces (through multipart where offered)
    large_size = 20 * MiB
    chunk_size = MiB
    #: how many threads write different names at once
    concurrent_writers = 4

    def target_section(self, target: Target) -> dict[str, Any]:
        """The YAML target entry that reaches the same place as ``target``."""
        return {"name": "kit", "url": target.url, "options": dict(target.options)}

    # -- the required core ---------------------------------------------------------

    def test_a_new_location_lists_empty(self, target):
        try:
            listed = target.list()
        except StorageError:
            target.check()  # a store that needs its place created first
            listed = target.list()
        assert listed == []

    def test_round_trip(self, target):
        data = pattern(300_000)
        target.write_bytes("a.bin", data)
        assert _read_all(target, "a.bin") == data
        assert target.read_bytes("a.bin") == data
        assert target.size("a.bin") == len(data)
        listed = {f.name: f for f in target.list()}
        assert list(listed) == ["a.bin"]
        assert listed["a.bin"].size in (None, len(data))
        mtime = listed["a.bin"].mtime  # POSIX seconds: cleanup ages leftovers by it
        assert mtime is None or abs(mtime - time.time()) < 86400, f"mtime {mtime} is not POSIX seconds of now"
        assert isinstance(target.file_url("a.bin"), str) and "a.bin" in target.file_url("a.bin")

    def test_an_empty_file_round_trips(self, target):
        target.write_bytes("empty", b"")
        assert _read_all(target, "empty") == b""
        assert target.size("empty") == 0

    def test_a_write_is_invisible_until_commit(self, target):
        writer = target.open_write("pending.bin")
        try:
            writer.write(pattern(100_000))
            names = _names(target)
            assert "pending.bin" not in names
            for name in names:  # a temporary name is allowed, in the convention cleanup knows
                parsed = parse_temp_name(name)
                assert parsed is not None, f"{name!r} is listed while a write is pending and is no temp name"
                assert parsed[0] == "pending.bin"
            with pytest.raises(BackupNotFoundError):
                with target.open_read("pending.bin") as f:
                    f.read()
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        assert _names(target) == ["pending.bin"]
        assert _read_all(target, "pending.bin") == pattern(100_000)

    def test_abort_leaves_nothing_and_twice_is_safe(self, target):
        writer = target.open_write("aborted.bin")
        writer.write(pattern(3 * MiB))
        writer.abort()
        writer.abort()
        assert _names(target) == []
        with pytest.raises(BackupNotFoundError):
            target.size("aborted.bin")
        if isinstance(target, UploadCleanup):
            assert [u.name for u in target.incomplete_uploads()] == []

    def test_overwrite_replaces_the_bytes(self, target):
        target.write_bytes("same", b"first version, longer than the second")
        first = {f.name: f for f in target.list()}["same"]
        target.write_bytes("same", b"second")
        assert _read_all(target, "same") == b"second"
        assert target.size("same") == len(b"second")
        assert _names(target) == ["same"]
        second = {f.name: f for f in target.list()}["same"]
        if first.etag is not None or second.etag is not None:
            # a listed ETag must change with the bytes: the manifest cache trusts it
            assert second.etag != first.etag

    def test_delete_and_list(self, target):
        target.write_bytes("keep", b"k")
        target.write_bytes("drop", b"d")
        assert _names(target) == ["drop", "keep"]
        target.delete("drop")
        assert _names(target) == ["keep"]
        with pytest.raises(BackupNotFoundError):
            _read_all(target, "drop")
        target.delete("drop")  # a missing name is no error
        target.delete("never-written")
        assert _names(target) == ["keep"]

    def test_sizes_match_listing_and_size(self, target):
        for i, n in enumerate((1, 1000, 65_537)):
            target.write_bytes(f"f{i}", pattern(n, seed=i))
        listed = {f.name: f.size for f in target.list()}
        for i, n in enumerate((1, 1000, 65_537)):
            assert target.size(f"f{i}") == n
            assert listed[f"f{i}"] in (None, n)

    def test_missing_names_raise_not_found_naming_the_target(self, target):
        target.write_bytes("present", b"x")  # the location exists; only the name is missing
        with pytest.raises(BackupNotFoundError) as read_err:
            with target.open_read("missing.bin") as f:
                f.read()
        with pytest.raises(BackupNotFoundError) as size_err:
            target.size("missing.bin")
        for err in (read_err.value, size_err.value):
            assert isinstance(err, StorageError) and isinstance(err, EterniaBackupError)
            assert repr(target.name) in str(err), str(err)  # "target 'name': ..."
            assert "missing.bin" in str(err)

    def test_a_dead_writers_leftover_is_removed_by_cleanup(self, target, tmp_path):
        leftover = _dead_writer_temp_name(KIT_ARCHIVE)
        target.write_bytes(leftover, b"half an archive")
        assert leftover in _names(target)
        source_dir = tmp_path / "kit-source"
        source_dir.mkdir()
        config = _write_config(tmp_path / "kit-config", {
            "name": KIT_SERIES, "state_dir": str(tmp_path / "kit-state"),
            "sources": [{"type": "directory", "name": "d", "path": str(source_dir)}],
            "targets": [self.target_section(target)],
        })
        mgr = BackupManager.from_config(config)
        orphans = mgr.status()["targets"]["kit"]["orphans"]
        assert [(o["name"], o["kind"], o["due"]) for o in orphans] == [(leftover, "temporary file", True)]
        assert "(dead)" in orphans[0]["writer"]
        result = mgr.cleanup()
        assert result.ok, result.errors
        assert result.targets[0].leftovers_removed == [leftover]
        assert leftover not in _names(target)

    def test_a_large_file_round_trips(self, target):
        chunk = pattern(self.chunk_size, seed=7)
        expected = hashlib.sha256()
        writer = target.open_write("large.bin")
        try:
            for i in range(self.large_size // self.chunk_size):
                piece = i.to_bytes(8, "big") + chunk[8:]  # every chunk differs
                writer.write(piece)
                expected.update(piece)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        assert target.size("large.bin") == self.large_size
        got = hashlib.sha256()
        with target.open_read("large.bin") as f:
            while block := f.read(MiB):
                got.update(block)
        assert got.hexdigest() == expected.hexdigest()
        assert _names(target) == ["large.bin"]
        if isinstance(target, UploadCleanup):
            assert [u.name for u in target.incomplete_uploads()] == []

    def test_concurrent_writers_of_different_names(self, target):
        errors: list[BaseException] = []

        def write(i: int) -> None:
            try:
                writer = target.open_write(f"w{i}.bin")
                try:
                    for part in range(4):
                        writer.write(pattern(64 * 1024, seed=i * 10 + part))
                    writer.commit()
                except BaseException:
                    writer.abort()
                    raise
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(self.concurrent_writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, [f"{type(e).__name__}: {e}" for e in errors]
        assert _names(target) == sorted(f"w{i}.bin" for i in range(self.concurrent_writers))
        for i in range(self.concurrent_writers):
            assert _read_all(target, f"w{i}.bin") == b"".join(pattern(64 * 1024, seed=i * 10 + p) for p in range(4))

    # -- optional interfaces -----------------------------------------------------------

    def test_local_paths_hold_the_bytes(self, target):
        if not isinstance(target, LocalPaths):
            pytest.skip("the target offers no LocalPaths")
        target.write_bytes("local.bin", b"on this machine")
        assert target.root_path.is_absolute() and target.root_path.is_dir()
        assert target.local_path("local.bin").read_bytes() == b"on this machine"

    def test_conditional_writes(self, target):
        if not isinstance(target, ConditionalWrites):
            pytest.skip("the target offers no ConditionalWrites")
        target.check()
        assert target.read_with_etag("lease") is None
        first = target.conditional_put("lease", b"one", if_none_match=True)
        assert first is not None
        assert target.conditional_put("lease", b"two", if_none_match=True) is None  # it exists
        assert target.read_with_etag("lease") == (b"one", first)
        assert target.conditional_put("lease", b"two", if_match='"not-the-etag"') is None
        second = target.conditional_put("lease", b"two", if_match=first)
        assert second is not None and second != first
        assert target.read_with_etag("lease") == (b"two", second)
        assert target.conditional_put("lease", b"three", if_match=first) is None  # first is stale now
        assert target.conditional_delete("lease", first) is False
        assert target.read_with_etag("lease") == (b"two", second)
        assert target.conditional_delete("lease", second) is True
        assert target.read_with_etag("lease") is None
        assert target.conditional_delete("lease", second) is False

    def test_upload_cleanup_finds_and_aborts_an_abandoned_upload(self, target):
        if not isinstance(target, UploadCleanup):
            pytest.skip("the target offers no UploadCleanup")
        writer = target.open_write(KIT_ARCHIVE)
        writer.write(pattern(2 * MiB))  # abandoned: neither committed nor aborted
        uploads = [u for u in target.incomplete_uploads() if u.name == KIT_ARCHIVE]
        assert len(uploads) == 1
        target.abort_upload(uploads[0])
        assert [u.name for u in target.incomplete_uploads() if u.name == KIT_ARCHIVE] == []
        assert KIT_ARCHIVE not in _names(target)
        writer.abort()  # the writer learns its upload is gone; nothing may come back
        for name in _names(target):  # what a dead writer would leave beside its upload: a temp name
            parsed = parse_temp_name(name)
            assert parsed is not None and parsed[0] == KIT_ARCHIVE, name
            target.delete(name)
        assert _names(target) == []


# -- sources -------------------------------------------------------------------------


class SourceConformance:
    """The contract of a source (:class:`eternia_backup.api.Source`), through :class:`~eternia_backup.BackupManager`.

    **Fixture to provide:** ``source_section``, the YAML mapping of one
    configured source (``type``, ``name`` and its options) over live state made
    for this test; paths in it must be absolute (the kit's config file lives
    in a directory of its own). Backups go to a local directory.

    **Hooks** (override to fit the kind of state):

    * :meth:`capture_state` reads the live state now, as something comparable;
    * :meth:`restored_state` reads what a restore ``--to DIR`` put into ``DIR``;
    * :meth:`mutate_state` changes the live state (so that a restore has work);
    * :meth:`assert_same_state` fails unless two captured states are the same;
    * :meth:`assert_consistent` checks a restored state on its own (a
      database's integrity); it is run on the backup made while
      :meth:`mutate_state` ran in another thread.

    ``in_place = False`` skips the in-place restore tests (a source that can
    only restore ``--to``).
    """

    in_place = True

    # -- hooks -------------------------------------------------------------------------

    def capture_state(self, section: dict[str, Any]) -> Any:
        raise NotImplementedError("override capture_state(section): read the live state")

    def restored_state(self, section: dict[str, Any], directory: Path) -> Any:
        raise NotImplementedError("override restored_state(section, directory): read a --to restore")

    def mutate_state(self, section: dict[str, Any]) -> None:
        raise NotImplementedError("override mutate_state(section): change the live state")

    def assert_same_state(self, original: Any, restored: Any) -> None:
        assert restored == original

    def assert_consistent(self, section: dict[str, Any], restored: Any) -> None:
        """Check a restored state on its own; the default accepts any."""

    # -- the kit's configuration ------------------------------------------------------------

    @pytest.fixture
    def kit_manager(self, source_section, tmp_path) -> BackupManager:
        base = tmp_path / "kit-config"
        config = _write_config(base, {
            "name": KIT_SERIES, "state_dir": str(tmp_path / "kit-state"),
            "sources": [source_section],
            "targets": [{"name": "kit", "url": str(tmp_path / "kit-backups")}],
        })
        return BackupManager.from_config(config)

    # -- tests -------------------------------------------------------------------------------

    def test_backup_is_listed_and_verifies(self, kit_manager, source_section):
        result = kit_manager.create_backup()
        entries = kit_manager.list_backups()
        assert [e.backup_id for e in entries] == [result.backup_id]
        assert [s.name for s in result.manifest.sources] == [source_section["name"]]
        report = kit_manager.verify_backup(result.backup_id)
        assert report.ok

    def test_restore_to_a_fresh_directory_equals_the_original(self, kit_manager, source_section, tmp_path):
        original = self.capture_state(source_section)
        kit_manager.create_backup()
        self.mutate_state(source_section)  # the --to restore must come from the backup, not the live state
        kit_manager.restore_backup("latest", to=tmp_path / "restored")
        restored = self.restored_state(source_section, tmp_path / "restored")
        self.assert_same_state(original, restored)
        self.assert_consistent(source_section, restored)

    def test_restore_in_place_brings_the_state_back(self, kit_manager, source_section):
        if not self.in_place:
            pytest.skip("this source restores only --to a directory")
        original = self.capture_state(source_section)
        kit_manager.create_backup()
        self.mutate_state(source_section)
        with pytest.raises(AssertionError):  # else this test could not fail
            self.assert_same_state(original, self.capture_state(source_section))
        kit_manager.restore_backup("latest")
        self.assert_same_state(original, self.capture_state(source_section))
        assert kit_manager.status()["interrupted_restore"] is None

    def test_dry_run_changes_nothing(self, kit_manager, source_section, tmp_path):
        kit_manager.create_backup()
        self.mutate_state(source_section)
        changed = self.capture_state(source_section)
        if self.in_place:
            result = kit_manager.restore_backup("latest", dry_run=True)
            assert result.dry_run and result.changes, "a dry run says what it would change"
        result = kit_manager.restore_backup("latest", to=tmp_path / "dry", dry_run=True)
        assert result.dry_run and result.changes
        self.assert_same_state(changed, self.capture_state(source_section))
        assert not (tmp_path / "dry").exists()

    def test_a_cancelled_backup_commits_nothing(self, kit_manager, tmp_path):
        cancel = threading.Event()
        cancel.set()  # as a stopping scheduler does
        with pytest.raises(Cancelled):
            kit_manager.create_backup(cancel=cancel)
        assert kit_manager.list_backups() == []
        store = tmp_path / "kit-backups"
        assert not store.exists() or sorted(p.name for p in store.iterdir()) == []

    def test_backup_while_the_state_changes_restores_a_consistent_state(self, kit_manager, source_section,
                                                                         tmp_path):
        changer = threading.Thread(target=self.mutate_state, args=(source_section,))
        changer.start()
        try:
            kit_manager.create_backup()
        finally:
            changer.join(60)
        kit_manager.restore_backup("latest", to=tmp_path / "restored")
        self.assert_consistent(source_section, self.restored_state(source_section, tmp_path / "restored"))


# -- archivers and compressions -----------------------------------------------------------


class ArchiverConformance:
    """The contract of an archive format (:class:`eternia_backup.api.Archiver`).

    **Fixture to provide:** ``archiver``, an instance of the archiver class.
    Entries go in through the writer's sections and must come back by the
    reader as ``<section>/<relpath>`` members with their bytes.
    """

    large_size = 20 * MiB

    def _pack(self, archiver: Archiver, fill) -> bytes:
        buf = io.BytesIO()
        with archiver.writer(buf) as aw:
            fill(aw)
        return buf.getvalue()

    def _unpack(self, archiver: Archiver, data: bytes) -> dict[str, tuple[str, bytes | str | None]]:
        out: dict[str, tuple[str, bytes | str | None]] = {}
        reader = archiver.reader(io.BytesIO(data))
        for m in reader:
            if m.kind == "file":
                with reader.open_member(m) as f:
                    out[m.name.rstrip("/")] = ("file", f.read())
            elif m.kind == "symlink":
                out[m.name.rstrip("/")] = ("symlink", m.linkname)
            else:
                out[m.name.rstrip("/")] = (m.kind, None)
        return out

    def test_entries_round_trip(self, archiver, tmp_path):
        on_disk = tmp_path / "on-disk.txt"
        on_disk.write_bytes(b"read from disk\n" * 100)
        streamed = pattern(70_000)

        def fill(aw):
            a = aw.section("a")
            a.add_directory("dir", mode=0o40755, mtime=1_700_000_000)
            a.add_file("dir/file.txt", on_disk)
            a.add_stream("stream.bin", io.BytesIO(streamed), len(streamed), mode=0o600, mtime=1_700_000_000)
            a.add_symlink("link", "dir/file.txt", mtime=1_700_000_000)
            b = aw.section("b")
            b.add_stream("other", io.BytesIO(b"b's bytes"), 9, mtime=1_700_000_000)

        got = self._unpack(archiver, self._pack(archiver, fill))
        assert got["a/dir"] == ("dir", None)
        assert got["a/dir/file.txt"] == ("file", on_disk.read_bytes())
        assert got["a/stream.bin"] == ("file", streamed)
        assert got["a/link"] == ("symlink", "dir/file.txt")
        assert got["b/other"] == ("file", b"b's bytes")

    def test_an_empty_archive_reads_back_empty(self, archiver):
        data = self._pack(archiver, lambda aw: None)
        assert self._unpack(archiver, data) == {}

    def test_a_large_entry_round_trips(self, archiver):
        chunk = pattern(MiB)
        blocks = self.large_size // MiB

        class Stream:
            def __init__(self):
                self.i = 0

            def read(self, n=-1):
                if self.i >= blocks:
                    return b""
                self.i += 1
                return (self.i).to_bytes(8, "big") + chunk[8:]

        expected = hashlib.sha256(b"".join((i).to_bytes(8, "big") + chunk[8:] for i in range(1, blocks + 1)))

        def fill(aw):
            aw.section("big").add_stream("big.bin", Stream(), self.large_size, mtime=1_700_000_000)

        data = self._pack(archiver, fill)
        reader = archiver.reader(io.BytesIO(data))
        members = [m for m in reader]
        big = next(m for m in members if m.name.rstrip("/") == "big/big.bin")
        assert big.size == self.large_size
        got = hashlib.sha256()
        reader = archiver.reader(io.BytesIO(data))
        for m in reader:
            if m.name.rstrip("/") == "big/big.bin":
                with reader.open_member(m) as f:
                    while block := f.read(MiB):
                        got.update(block)
        assert got.hexdigest() == expected.hexdigest()

    def _corrupt_cases(self, archiver) -> dict[str, bytes]:
        data = self._pack(archiver, lambda aw: aw.section("a").add_stream(
            "x", io.BytesIO(pattern(200_000)), 200_000, mtime=1_700_000_000))
        return {"truncated": data[: len(data) // 3], "garbage": pattern(10_000, seed=99)}

    @pytest.mark.parametrize("case", ["truncated", "garbage"])
    def test_corrupted_input_raises_a_clear_error(self, archiver, case):
        bad = self._corrupt_cases(archiver)[case]
        with pytest.raises((ArchiveError, IntegrityError)) as err:
            self._unpack(archiver, bad)
        assert str(err.value)


class CompressionConformance:
    """The contract of a compression (:class:`eternia_backup.api.Compression`).

    **Fixture to provide:** ``compression``, an instance of the compression class.

    ``errors`` are the exceptions a damaged stream may raise (the format's own);
    ``detects_corruption`` and ``detects_truncation`` say whether the format
    can notice a flipped byte or a cut end (``none`` notices neither; the
    manifest's SHA-256 is what catches them at verify and restore).
    """

    large_size = 20 * MiB
    errors: tuple[type[BaseException], ...] = (EterniaBackupError, OSError, EOFError, ValueError)
    detects_corruption = True
    detects_truncation = True

    def _compress(self, compression: Compression, data: bytes, level: int | None = None, chunk: int = MiB) -> bytes:
        buf = io.BytesIO()
        w = compression.compressor(buf, level)
        for i in range(0, len(data), chunk):
            w.write(data[i: i + chunk])
        w.close()
        assert not buf.closed, "closing the compressor must not close the underlying stream"
        return buf.getvalue()

    def _decompress(self, compression: Compression, data: bytes) -> bytes:
        r = compression.decompressor(io.BytesIO(data))
        out = bytearray()
        while block := r.read(MiB):
            out += block
        return bytes(out)

    def test_round_trip_at_each_level(self, compression):
        data = pattern(500_000) + b"compressible " * 50_000
        levels = [None] + (list(compression.levels) if compression.levels else [])
        for level in levels:
            assert self._decompress(compression, self._compress(compression, data, level)) == data, level

    def test_empty_input(self, compression):
        assert self._decompress(compression, self._compress(compression, b"")) == b""

    def test_large_input(self, compression):
        data = pattern(self.large_size)
        packed = self._compress(compression, data, compression.levels[0] if compression.levels else None)
        assert hashlib.sha256(self._decompress(compression, packed)).digest() == hashlib.sha256(data).digest()

    def test_a_flipped_byte_raises(self, compression):
        if not self.detects_corruption:
            pytest.skip("this format cannot notice a flipped byte")
        packed = bytearray(self._compress(compression, pattern(400_000)))
        packed[len(packed) // 2] ^= 0xFF
        with pytest.raises(self.errors):
            self._decompress(compression, bytes(packed))

    def test_a_truncated_stream_raises(self, compression):
        if not self.detects_truncation:
            pytest.skip("this format cannot notice a cut end")
        packed = self._compress(compression, pattern(400_000))
        with pytest.raises(self.errors):
            self._decompress(compression, packed[: len(packed) // 2])

    def test_garbage_raises(self, compression):
        if not self.detects_corruption:
            pytest.skip("this format cannot tell garbage from data")
        with pytest.raises(self.errors):
            self._decompress(compression, pattern(10_000, seed=5))
