"""Plugins: every hook documented and exercised; built-ins are plugins; third-party
plugins work end to end, from YAML, from entry points, and can be blocked.

Throw-away plugins are module objects or instances handed to
``get_plugin_manager(extra_plugins=...)``: each test builds its own plugin
manager, so nothing leaks between tests. The source plugin is the complete
example of docs/plugins.md, run as written.
"""

from __future__ import annotations

import bz2
import hashlib
import inspect
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import eternia_backup
import yaml
import zstandard

from conftest import ROOT, default_section, run_cli, run_cli_in_process
from eternia_backup import BackupManager, hookimpl, hookspecs
from eternia_backup.backup import BackupResult, run_backup
from eternia_backup.builtin.tar import TarArchiver
from eternia_backup.cleanup import CleanupResult
from eternia_backup.config import BackupConfig, parse_config
from eternia_backup.errors import (
    BackupFailedError,
    BackupNotFoundError,
    ConfigError,
    PluginError,
    RestoreError,
    SourceError,
)
from eternia_backup.plugins import DISABLE_ENV, build_registry, get_plugin_manager
from eternia_backup.providers import AtomicWrite, Compression, Source, StoredFile, Target
from eternia_backup.builtin.sqlite import SqliteSource
from eternia_backup.restore import RestoreResult

DOCS = ROOT / "docs" / "plugins.md"
HOOKS = sorted(name for name, obj in vars(hookspecs).items() if hasattr(obj, "eternia_backup_spec"))
LIFECYCLE = [h for h in HOOKS if not h.startswith("eternia_register_")]
BUILTIN_PROVIDERS = {
    ("source", "directory"), ("source", "sqlite"), ("source", "command"),
    ("archiver", "tar"),
    ("compression", "zstd"), ("compression", "gzip"), ("compression", "xz"), ("compression", "none"),
    ("target", "*"), ("target", "s3"),
}


# -- helpers -----------------------------------------------------------------------


def plugin_module(name: str, **hooks) -> types.ModuleType:
    """A throw-away plugin: a real module object holding hook implementations."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def manager(config_path: Path, *plugins) -> BackupManager:
    pm = get_plugin_manager(load_entry_points=False, extra_plugins=plugins)
    return BackupManager.from_config(config_path, plugin_manager=pm)


def docs_sections() -> dict[str, str]:
    """Level-3 sections of docs/plugins.md: heading text -> body."""
    sections, current = {}, None
    for line in DOCS.read_text().splitlines():
        if re.match(r"^#{1,3} ", line):
            current = line[4:].strip() if line.startswith("### ") else None
            if current is not None:
                sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def notes_plugin() -> types.ModuleType:
    """The complete example plugin of docs/plugins.md, executed as the module eternia_notes."""
    text = DOCS.read_text()
    section = text.split("## A complete example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("eternia_notes")
    exec(compile(code, f"{DOCS}:eternia_notes", "exec"), module.__dict__)
    return module


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


class Recorder:
    """Implements every lifecycle hook; records each call's arguments, and what was
    in ``watch`` (the backups directory) at that moment."""

    def __init__(self, watch: Path | None = None):
        self.watch = watch
        self.calls: list[tuple[str, dict]] = []

    def _record(self, hook: str, **kwargs) -> None:
        kwargs["_files"] = files_in(self.watch) if self.watch else []
        self.calls.append((hook, kwargs))

    def of(self, hook: str) -> list[dict]:
        return [kw for name, kw in self.calls if name == hook]

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    @hookimpl
    def eternia_backup_started(self, backup_id, config):
        self._record("eternia_backup_started", backup_id=backup_id, config=config)

    @hookimpl
    def eternia_backup_succeeded(self, result):
        self._record("eternia_backup_succeeded", result=result)

    @hookimpl
    def eternia_backup_failed(self, backup_id, error, result):
        self._record("eternia_backup_failed", backup_id=backup_id, error=error, result=result)

    @hookimpl
    def eternia_restore_started(self, backup_id, sources, destination, dry_run):
        self._record("eternia_restore_started", backup_id=backup_id, sources=sources,
                     destination=destination, dry_run=dry_run)

    @hookimpl
    def eternia_restore_finished(self, backup_id, error, result):
        self._record("eternia_restore_finished", backup_id=backup_id, error=error, result=result)

    @hookimpl
    def eternia_cleanup_started(self, targets):
        self._record("eternia_cleanup_started", targets=targets)

    @hookimpl
    def eternia_cleanup_finished(self, result):
        self._record("eternia_cleanup_finished", result=result)

    @hookimpl
    def eternia_drill_started(self, backup_id):
        self._record("eternia_drill_started", backup_id=backup_id)

    @hookimpl
    def eternia_drill_finished(self, result):
        self._record("eternia_drill_finished", result=result)


class Raiser:
    """A buggy monitoring plugin: every lifecycle hook raises."""

    def _boom(self, hook: str):
        raise RuntimeError(f"monitoring plugin bug in {hook}")

    @hookimpl
    def eternia_backup_started(self):
        self._boom("eternia_backup_started")

    @hookimpl
    def eternia_backup_succeeded(self):
        self._boom("eternia_backup_succeeded")

    @hookimpl
    def eternia_backup_failed(self):
        self._boom("eternia_backup_failed")

    @hookimpl
    def eternia_restore_started(self):
        self._boom("eternia_restore_started")

    @hookimpl
    def eternia_restore_finished(self):
        self._boom("eternia_restore_finished")

    @hookimpl
    def eternia_cleanup_started(self):
        self._boom("eternia_cleanup_started")

    @hookimpl
    def eternia_cleanup_finished(self):
        self._boom("eternia_cleanup_finished")

    @hookimpl
    def eternia_drill_started(self):
        self._boom("eternia_drill_started")

    @hookimpl
    def eternia_drill_finished(self):
        self._boom("eternia_drill_finished")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- every hook is documented and exercised -----------------------------------------


def test_the_hook_list_is_what_the_design_promises():
    assert set(HOOKS) >= {
        "eternia_register_sources", "eternia_register_archivers", "eternia_register_compressions",
        "eternia_register_targets", "eternia_backup_started", "eternia_backup_succeeded",
        "eternia_backup_failed", "eternia_restore_started", "eternia_restore_finished",
        "eternia_cleanup_finished",
    }


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_spec_documents_each_parameter(hook):
    spec = getattr(hookspecs, hook)
    doc = inspect.getdoc(spec) or ""
    assert doc.split("\n", 1)[0].strip(), f"{hook} has no summary line"
    for param in inspect.signature(spec).parameters:
        assert re.search(rf":param {param}:\s*\S", doc), f"{hook}: parameter {param!r} is not documented"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_in_docs_plugins_md(hook):
    sections = docs_sections()
    assert hook in sections, f"docs/plugins.md has no '### {hook}' section"
    for param in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert f"`{param}`" in sections[hook], f"docs/plugins.md '### {hook}' does not describe `{param}`"


def test_docs_plugins_md_documents_no_hook_that_does_not_exist():
    documented = {h for h in docs_sections() if h.startswith("eternia_")}
    assert documented <= set(HOOKS), f"stale hook sections: {sorted(documented - set(HOOKS))}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    assert callable(globals().get(f"test_hook_{hook}")), f"write test_hook_{hook} in tests/test_plugins.py"


# -- built-ins are plugins ------------------------------------------------------------


def test_builtins_are_registered_through_the_same_hooks():
    pm = get_plugin_manager(load_entry_points=False)
    registry = build_registry(pm)
    provided = {(p.kind, p.name): p for p in registry.all()}
    assert BUILTIN_PROVIDERS <= set(provided)
    for p in provided.values():
        assert p.plugin.startswith("eternia_backup.builtin."), p
        # the plugin named is the module that registered the class, through a hook
        module = pm.get_plugin(p.plugin)
        assert module is sys.modules[p.plugin]
        assert any(getattr(module, h, None) is not None for h in HOOKS if h.startswith("eternia_register_"))
    assert provided[("source", "sqlite")].plugin == "eternia_backup.builtin.sqlite"
    assert provided[("compression", "zstd")].plugin == "eternia_backup.builtin.compressions"


def test_cli_plugins_lists_every_provider_with_its_plugin():
    registry = build_registry(get_plugin_manager())
    expected = {(p.kind, p.name, p.plugin) for p in registry.all()}
    assert {(k, n) for k, n, _ in expected} >= BUILTIN_PROVIDERS

    proc = run_cli("plugins")
    assert proc.returncode == 0, proc.stderr
    listed = set()
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts[1] == "*":  # "* (any other protocol)"
            parts = [parts[0], "*"] + parts[5:]
        listed.add((parts[0], parts[1], parts[2]))
        if parts[2].startswith("eternia_backup.builtin."):
            assert parts[3:] == ["eternia-backup", eternia_backup.__version__], line
    assert listed == expected

    proc = run_cli("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["plugins"]
    assert {(r["kind"], r["name"], r["plugin"]) for r in rows} == expected
    sqlite = next(r for r in rows if (r["kind"], r["name"]) == ("source", "sqlite"))
    assert sqlite["class"] == "eternia_backup.builtin.sqlite.SqliteSource"
    assert (sqlite["distribution"], sqlite["version"]) == ("eternia-backup", eternia_backup.__version__)
    postgres = next(r for r in rows if (r["kind"], r["name"]) == ("source", "postgres"))
    assert postgres["distribution"] == "eternia-backup-postgres"
    redis = next(r for r in rows if (r["kind"], r["name"]) == ("source", "redis"))
    assert (redis["distribution"], redis["plugin"]) == ("eternia-backup-redis", "redis")
    mysql = next(r for r in rows if (r["kind"], r["name"]) == ("source", "mysql"))
    assert (mysql["distribution"], mysql["class"]) == ("eternia-backup-mysql", "eternia_backup_mysql.MysqlSource")


# -- registry hooks: third-party providers end to end --------------------------------------


@pytest.fixture
def notes_app(app):
    """The example app plus a notes file, and a config using the docs' `notes` source."""
    notes = app / "state" / "notes.txt"
    notes.write_text("buy milk\nrotate the keys — Grüße\n")
    os.utime(notes, (1_700_000_000, 1_700_000_000))
    section = default_section()
    section["sources"] = section["sources"] + [{"type": "notes", "name": "notes", "path": "state/notes.txt"}]
    config = app / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": section}))
    return app, config, notes


def test_hook_eternia_register_sources(notes_app, tmp_path):
    app, config, notes = notes_app
    original = notes.read_bytes()
    mgr = manager(config, notes_plugin())
    assert {(p.kind, p.name, p.plugin) for p in mgr.registry.all()} >= {("source", "notes", "eternia_notes")}

    result = mgr.create_backup()
    record = {s.name: s for s in result.manifest.sources}["notes"]
    assert (record.type, record.entries, record.size) == ("notes", 1, len(original))
    assert record.details["path"] == str(notes)
    with open(os.fspath(result), "rb") as raw, \
            tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(raw), mode="r|") as tar:
        members = {m.name: m for m in tar}
    assert members["notes/notes.txt"].size == len(original)

    # restore elsewhere: the file lands in <to>/<source name>/, and nothing else is left there
    out = tmp_path / "restored"
    restored = mgr.restore_backup(result.backup_id, to=out)
    assert "notes" in restored.sources
    assert (out / "notes" / "notes.txt").read_bytes() == original
    assert int((out / "notes" / "notes.txt").stat().st_mtime) == 1_700_000_000
    assert files_in(out / "notes") == ["notes.txt"]
    assert files_in(out) == ["db", "files", "notes"]

    # restore in place puts the backed-up content back over a changed file
    notes.write_text("overwritten by mistake\n")
    mgr.restore_backup("latest", sources=["notes"])
    assert notes.read_bytes() == original
    assert files_in(notes.parent) == files_in(app / "state")  # no staging or previous copy left beside it
    assert not [n for n in files_in(notes.parent) if n.startswith(".")]


def test_a_plugin_source_validates_its_own_yaml_options(notes_app):
    app, config, _ = notes_app
    data = yaml.safe_load(config.read_text())
    data["backup"]["sources"][2] = {"type": "notes", "name": "notes", "pth": "state/notes.txt"}
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        manager(config, notes_plugin())
    assert "backup.sources[2].pth" in str(exc.value)
    assert "'path'" in str(exc.value)


class PaxArchiver(TarArchiver):
    """A third-party archiver with its own format name and file extension."""

    format_name = "pax"
    extension = ".pax"


def test_hook_eternia_register_archivers(write_config, app, tmp_path):
    plugin = plugin_module("eternia_pax", eternia_register_archivers=lambda register: register(PaxArchiver))
    mgr = manager(write_config(archive={"format": "pax"}), plugin)
    assert "pax" in mgr.registry.names("archiver")

    result = mgr.create_backup()
    assert result.manifest.archive.format == "pax"
    assert result.manifest.archive.file.endswith(".pax.zst")
    # a backup made with a plugin archiver is a backup like any other
    assert [e.backup_id for e in mgr.list_backups()] == [result.backup_id]
    mgr.verify_backup("latest")
    mgr.restore_backup("latest", to=tmp_path / "out")
    assert tree(tmp_path / "out" / "files") == tree(app / "state" / "files")


class Bz2Compression(Compression):
    name = "bz2"
    extension = ".bz2"
    levels = (1, 9)

    def compressor(self, fileobj, level):
        return bz2.BZ2File(fileobj, "wb", compresslevel=9 if level is None else level)

    def decompressor(self, fileobj):
        return bz2.BZ2File(fileobj, "rb")


def test_hook_eternia_register_compressions(write_config, app, tmp_path):
    plugin = plugin_module("eternia_bz2", eternia_register_compressions=lambda register: register(Bz2Compression))
    mgr = manager(write_config(archive={"compression": "bz2", "level": 5}), plugin)
    result = mgr.create_backup()
    assert result.manifest.archive.file.endswith(".tar.bz2")
    assert result.manifest.archive.compression == "bz2"
    # the standard tools read it
    proc = subprocess.run(["tar", "-xjf", os.fspath(result), "-C", str(tmp_path)], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path / "files") == tree(app / "state" / "files")
    mgr.restore_backup("latest", to=tmp_path / "out")
    assert tree(tmp_path / "out" / "files") == tree(app / "state" / "files")

    with pytest.raises(ConfigError, match=r"backup\.archive\.level.*1 to 9.*got 12"):
        manager(write_config(archive={"compression": "bz2", "level": 12}), plugin)


class _VaultWrite(AtomicWrite):
    def __init__(self, target: "VaultTarget", filename: str):
        self.target, self.filename, self.buffer = target, filename, io.BytesIO()

    def write(self, data) -> int:
        return self.buffer.write(data)

    def commit(self) -> None:
        self.target.files[self.filename] = self.buffer.getvalue()
        VaultTarget.commits.append(self.filename)

    def abort(self) -> None:
        self.buffer = io.BytesIO()


class VaultTarget(Target):
    """A third-party target for ``vault://<name>`` URLs, holding files in memory."""

    protocols = ("vault",)
    vaults: dict[str, dict[str, bytes]] = {}
    commits: list[str] = []

    def __init__(self, name, url, options):
        super().__init__(name, url, options)
        self.files = self.vaults.setdefault(url.split("://", 1)[1], {})

    def list(self):
        return [StoredFile(n, len(b), None) for n, b in self.files.items()]

    def open_write(self, filename):
        return _VaultWrite(self, filename)

    def open_read(self, filename):
        if filename not in self.files:
            raise BackupNotFoundError(f"target {self.name!r}: no {filename}")
        return io.BytesIO(self.files[filename])

    def size(self, filename):
        return len(self.files[filename])

    def delete(self, filename):
        self.files.pop(filename, None)

    def file_url(self, filename):
        return f"{self.url.rstrip('/')}/{filename}"


@pytest.fixture
def vault():
    VaultTarget.vaults.clear()
    VaultTarget.commits.clear()
    yield VaultTarget.vaults
    VaultTarget.vaults.clear()


def test_hook_eternia_register_targets(write_config, app, tmp_path, vault):
    plugin = plugin_module("eternia_vault", eternia_register_targets=lambda register: register(VaultTarget))
    section = default_section()
    del section["storage_path"]
    mgr = manager(write_config(section, targets=[{"name": "vault", "url": "vault://team-a"}]), plugin)
    assert [type(t) for t in mgr.targets] == [VaultTarget]

    result = mgr.create_backup()
    archive, manifest_file = result.manifest.archive.file, result.manifest.filename
    assert [c.url for c in result.copies] == [f"vault://team-a/{archive}"]
    assert sorted(vault["team-a"]) == sorted([archive, manifest_file])
    # the archive is committed first; the manifest, which makes the backup exist, last
    assert VaultTarget.commits == [archive, manifest_file]
    stored = vault["team-a"][archive]
    assert hashlib.sha256(stored).hexdigest() == json.loads(vault["team-a"][manifest_file])["archive"]["sha256"]

    assert [e.backup_id for e in mgr.list_backups()] == [result.backup_id]
    mgr.restore_backup("latest", to=tmp_path / "out")
    assert tree(tmp_path / "out" / "files") == tree(app / "state" / "files")


@pytest.mark.parametrize("kind, hook, cls, builtin", [
    ("source", "eternia_register_sources", type("Sqlite2", (SqliteSource,), {"type_name": "sqlite"}),
     "eternia_backup.builtin.sqlite"),
    ("compression", "eternia_register_compressions", type("Zstd2", (Bz2Compression,), {"name": "zstd"}),
     "eternia_backup.builtin.compressions"),
    ("target", "eternia_register_targets", type("S3Again", (VaultTarget,), {"protocols": ("s3",)}),
     "eternia_backup.builtin.s3_target"),
])
def test_registering_an_existing_name_names_both_plugins(write_config, kind, hook, cls, builtin):
    plugin = plugin_module("eternia_copycat", **{hook: lambda register: register(cls)})
    with pytest.raises(PluginError) as exc:
        manager(write_config(), plugin)
    message = str(exc.value)
    assert "eternia_copycat" in message and builtin in message and kind in message
    assert DISABLE_ENV in message


@pytest.mark.parametrize("kind, hook, cls, problem", [
    ("source", "eternia_register_sources", type("Half", (Source,), {"type_name": "half"}),
     "does not implement backup, restore_plan (required by eternia_backup.api.Source)"),
    ("target", "eternia_register_targets", type("Half", (Target,), {"protocols": ("half",)}),
     "does not implement delete, file_url, list, open_read, open_write, size (required by eternia_backup.api.Target)"),
    ("compression", "eternia_register_compressions", type("Half", (), {"name": "half"}),
     "it must be a class subclassing eternia_backup.api.Compression"),
])
def test_a_provider_that_breaks_the_contract_is_refused_when_registered(kind, hook, cls, problem):
    plugin = plugin_module("eternia_half", **{hook: lambda register: register(cls)})
    with pytest.raises(PluginError) as exc:
        build_registry(get_plugin_manager(load_entry_points=False, extra_plugins=(plugin,)))
    assert "plugin 'eternia_half'" in str(exc.value) and problem in str(exc.value)


def test_a_misspelt_hook_implementation_fails_when_the_manager_is_built():
    plugin = plugin_module("eternia_typo", eternia_register_sourcez=lambda register: None)
    with pytest.raises(PluginError) as exc:
        get_plugin_manager(load_entry_points=False, extra_plugins=(plugin,))
    assert "eternia_register_sourcez" in str(exc.value)
    assert "eternia_typo" in str(exc.value)


def test_a_hook_implementation_with_an_unknown_argument_fails_when_registered():
    plugin = plugin_module("eternia_badarg", eternia_backup_succeeded=lambda result, backup_size: None)
    with pytest.raises(PluginError) as exc:
        get_plugin_manager(load_entry_points=False, extra_plugins=(plugin,))
    assert "eternia_badarg" in str(exc.value) and "backup_size" in str(exc.value)


def test_hook_eternia_cloud_backup_target(tmp_path, monkeypatch):
    """A plugin serves another cloud_backup provider; aws stays the S3 plugin's; an unserved one is an error."""

    class VaultCloud:
        @hookimpl
        def eternia_cloud_backup_target(self, settings, environment):
            if settings["provider"] != "vault":
                return None
            return f"memory://{settings['bucket']}/{environment}", {}

    import eternia_backup.plugins as plugins_mod

    section = {"cloud_backup": {"enabled": True, "provider": "vault", "bucket": "cellar"}, "environment": "staging"}
    with monkeypatch.context() as m:  # as if the plugin were installed
        real = plugins_mod.get_plugin_manager
        m.setattr(plugins_mod, "get_plugin_manager", lambda **kw: real(extra_plugins=(VaultCloud(),)))
        config = parse_config(section, base_dir=tmp_path)
        aws = parse_config({"cloud_backup": {"enabled": True, "bucket": "my-bucket", "prefix": "team"}},
                           base_dir=tmp_path)
    assert [(t.name, t.url) for t in config.targets if t.name == "cloud"] == [("cloud", "memory://cellar/staging")]
    assert [t.url for t in aws.targets if t.name == "cloud"] == ["s3://my-bucket/team/default"]
    with pytest.raises(ConfigError, match=r"backup.cloud_backup.provider: no installed plugin serves 'vault'"):
        parse_config(section, base_dir=tmp_path)


# -- lifecycle hooks --------------------------------------------------------------------


def test_hook_eternia_backup_started(write_config, app):
    recorder = Recorder(watch=app / "backups")
    mgr = manager(write_config(), recorder)
    result = mgr.create_backup()
    [started] = recorder.of("eternia_backup_started")
    assert started["backup_id"] == result.backup_id
    assert isinstance(started["config"], BackupConfig) and started["config"] is mgr.config
    assert started["_files"] == []  # called before anything was written
    assert recorder.names() == ["eternia_backup_started", "eternia_backup_succeeded"]


def test_hook_eternia_backup_succeeded(write_config, app):
    recorder = Recorder(watch=app / "backups")
    mgr = manager(write_config(), recorder)
    result = mgr.create_backup()
    [call] = recorder.of("eternia_backup_succeeded")
    got = call["result"]
    assert got is result and isinstance(got, BackupResult)
    assert got.backup_id == result.manifest.backup_id
    assert [(c.target, c.local_path) for c in got.copies] == [("local", Path(os.fspath(result)))]
    # called once the backup exists: archive and manifest are both in place
    assert call["_files"] == sorted([result.manifest.archive.file, result.manifest.filename])


def test_hook_eternia_backup_failed(write_config, app):
    recorder = Recorder(watch=app / "backups")
    section = default_section()
    section["sources"] = section["sources"] + [
        {"type": "command", "name": "dump", "command": "echo 'dump: connection refused' >&2; exit 3"}]
    mgr = manager(write_config(section), recorder)
    with pytest.raises(SourceError) as exc:
        mgr.create_backup()
    [call] = recorder.of("eternia_backup_failed")
    assert call["error"] is exc.value
    assert "connection refused" in str(call["error"])
    assert call["result"] is None
    [started] = recorder.of("eternia_backup_started")
    assert call["backup_id"] == started["backup_id"]
    assert not recorder.of("eternia_backup_succeeded")
    assert files_in(app / "backups") == []


def test_hook_eternia_backup_failed_with_the_copies_that_succeeded(write_config, app):
    recorder = Recorder()
    (app / "not-a-dir").write_text("a file where a target directory should be")
    mgr = manager(write_config(targets=[{"name": "broken", "url": str(app / "not-a-dir" / "backups")}]), recorder)
    with pytest.raises(BackupFailedError) as exc:
        mgr.create_backup()
    [call] = recorder.of("eternia_backup_failed")
    assert call["error"] is exc.value
    assert call["backup_id"] == exc.value.result.backup_id
    assert [c.target for c in call["result"].copies] == ["local"]
    assert "broken" in call["result"].failures


def test_hook_eternia_restore_started(write_config, app, tmp_path):
    recorder = Recorder(watch=tmp_path / "out")
    mgr = manager(write_config(), recorder)
    backup = mgr.create_backup()
    mgr.restore_backup(backup.backup_id, to=tmp_path / "out")
    [call] = recorder.of("eternia_restore_started")
    assert call["backup_id"] == backup.backup_id
    assert call["sources"] == ["files", "db"]
    assert call["destination"] == tmp_path / "out"
    assert call["dry_run"] is False
    assert call["_files"] == []  # nothing staged or swapped in yet

    recorder.calls.clear()
    mgr.restore_backup(backup.backup_id, to=tmp_path / "out2", sources=["db"])
    [call] = recorder.of("eternia_restore_started")
    assert call["sources"] == ["db"]


def test_hook_eternia_restore_finished(write_config, app, tmp_path):
    recorder = Recorder(watch=tmp_path / "out")
    mgr = manager(write_config(), recorder)
    backup = mgr.create_backup()
    result = mgr.restore_backup(backup.backup_id, to=tmp_path / "out")
    [call] = recorder.of("eternia_restore_finished")
    assert call["backup_id"] == backup.backup_id
    assert call["error"] is None
    assert call["result"] is result and isinstance(result, RestoreResult)
    assert call["_files"] == ["db", "files"]  # called after the swap
    assert recorder.names()[-2:] == ["eternia_restore_started", "eternia_restore_finished"]

    # a restore that fails reports its error
    recorder.calls.clear()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    with pytest.raises(RestoreError) as exc:
        mgr.restore_backup(backup.backup_id, to=blocker / "inside")  # under a file
    [call] = recorder.of("eternia_restore_finished")
    assert call["error"] is exc.value
    assert call["result"] is None
    assert blocker.read_text() == "a file, not a directory"


def test_hook_eternia_cleanup_started(write_config, app):
    recorder = Recorder(watch=app / "backups")
    mgr = manager(write_config(retention_days=7), recorder)
    backup = mgr.create_backup()
    mgr.cleanup(dry_run=True)
    assert not recorder.of("eternia_cleanup_started")  # a dry run is not reported
    mgr.cleanup_old_backups()
    [call] = recorder.of("eternia_cleanup_started")
    assert call["targets"] == ["local"]
    assert backup.manifest.filename in call["_files"]  # called before anything is deleted
    assert recorder.names()[-2:] == ["eternia_cleanup_started", "eternia_cleanup_finished"]


def test_hook_eternia_cleanup_finished(write_config, app):
    recorder = Recorder()
    mgr = manager(write_config(retention_days=7), recorder)
    old = run_backup(name=mgr.config.name, environment=mgr.config.environment,
                     sources=list(mgr.sources.values()), targets=mgr.targets, archiver=mgr.archiver,
                     compression=mgr.compression, level=None, pm=mgr.pm, config=mgr.config,
                     now=datetime.now(timezone.utc) - timedelta(days=30))
    new = mgr.create_backup()

    mgr.cleanup(dry_run=True)
    assert not recorder.of("eternia_cleanup_finished")  # a dry run deletes nothing and is not reported

    assert mgr.cleanup_old_backups() == 1
    [call] = recorder.of("eternia_cleanup_finished")
    result = call["result"]
    assert isinstance(result, CleanupResult) and result.ok and result.deleted_count == 1
    [target] = result.targets
    assert (target.target, target.deleted) == ("local", [old.backup_id])
    assert [e.backup_id for e in mgr.list_backups()] == [new.backup_id]


def test_hook_eternia_drill_started(write_config, app):
    section = {**default_section(), "drill": {"checks": {"db": {"sql": "SELECT count(*) > 0 FROM events"}}}}
    mgr = manager(write_config(section), recorder := Recorder())
    backup = mgr.create_backup()
    recorder.watch = mgr.drill_scratch_path
    assert mgr.drill().ok
    [call] = recorder.of("eternia_drill_started")
    assert call["backup_id"] == backup.backup_id  # 'latest' resolved
    assert call["_files"] == []  # before anything is restored into the scratch directory
    # the drill's restore is a restore like any other, between the drill's own events
    assert recorder.names()[-4:] == ["eternia_drill_started", "eternia_restore_started",
                                     "eternia_restore_finished", "eternia_drill_finished"]


def test_hook_eternia_drill_finished(write_config, app):
    section = {**default_section(), "drill": {"checks": {"files": {"command": "exit 5"}}}}
    mgr = manager(write_config(section), recorder := Recorder())
    backup = mgr.create_backup()
    recorder.watch = mgr.state.path.parent
    result = mgr.drill()
    [call] = recorder.of("eternia_drill_finished")
    assert call["result"] is result and not result.ok
    assert call["result"].backup_id == backup.backup_id
    assert [(c.source, c.name) for c in result.failed_checks] == [("files", "command")]
    assert mgr.drill_scratch_path.name not in call["_files"]  # the scratch copy is already removed

    # a drill that cannot even find a backup is reported too, with its error
    recorder.calls.clear()
    result = mgr.drill("20000101T000000Z-abcdef")
    assert recorder.names() == ["eternia_drill_started", "eternia_drill_finished"]
    [call] = recorder.of("eternia_drill_finished")
    assert call["result"] is result and not result.ok and "20000101T000000Z-abcdef" in result.error


def test_lifecycle_hook_errors_do_not_change_the_outcome(write_config, app, tmp_path, caplog):
    """A plugin that raises in every lifecycle hook: the spec says each exception is logged
    and the backup, restore and cleanup go on as if the plugin were not there."""
    recorder = Recorder()
    # registered last, so it runs first for every hook
    mgr = manager(write_config(retention_days=7), recorder, Raiser())
    caplog.set_level(logging.WARNING, logger="eternia_backup")

    result = mgr.create_backup()
    assert (app / "backups" / result.manifest.filename).exists()
    mgr.restore_backup(result.backup_id, to=tmp_path / "out")
    assert tree(tmp_path / "out" / "files") == tree(app / "state" / "files")
    assert mgr.cleanup_old_backups() == 0

    # the other plugin still saw every event
    assert recorder.names() == ["eternia_backup_started", "eternia_backup_succeeded",
                                "eternia_restore_started", "eternia_restore_finished",
                                "eternia_cleanup_started", "eternia_cleanup_finished"]
    # each failure is logged (at WARNING or above: caplog captures nothing lower here)
    for hook in recorder.names():
        assert f"monitoring plugin bug in {hook}" in caplog.text


def test_a_failing_lifecycle_hook_does_not_hide_why_a_backup_failed(write_config, app, caplog):
    recorder = Recorder()
    section = default_section()
    section["sources"] = section["sources"] + [{"type": "command", "name": "dump", "command": "exit 4"}]
    mgr = manager(write_config(section), recorder, Raiser())
    with pytest.raises(SourceError, match="exited with status 4"):
        mgr.create_backup()
    assert recorder.names() == ["eternia_backup_started", "eternia_backup_failed"]
    assert "monitoring plugin bug in eternia_backup_failed" in caplog.text
    assert files_in(app / "backups") == []


# -- blocking plugins ---------------------------------------------------------------------


def test_disable_env_removes_a_builtin_source(write_config, monkeypatch):
    config = write_config()  # uses a sqlite source
    monkeypatch.setenv(DISABLE_ENV, "eternia_backup.builtin.sqlite")
    registry = build_registry(get_plugin_manager())
    assert "sqlite" not in registry.names("source")
    assert "directory" in registry.names("source")
    with pytest.raises(ConfigError) as exc:
        BackupManager.from_config(config)
    message = str(exc.value)
    assert "backup.sources[1].type" in message and "'sqlite'" in message
    assert "command" in message and "directory" in message  # the known types

    proc = run_cli_in_process("config", "check", config=config)
    assert proc.returncode == 2
    assert "unknown source 'sqlite'" in proc.stderr and "Traceback" not in proc.stderr


def test_disable_env_blocks_extra_plugins_by_name(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, " eternia_bz2 , other")
    plugin = plugin_module("eternia_bz2", eternia_register_compressions=lambda register: register(Bz2Compression))
    registry = build_registry(get_plugin_manager(load_entry_points=False, extra_plugins=(plugin,)))
    assert "bz2" not in registry.names("compression")


# -- entry points ---------------------------------------------------------------------------

HELLO_PLUGIN = '''
from eternia_backup.api import DirectorySwapPlan, Source, hookimpl


class HelloSource(Source):
    type_name = "hello"

    def backup(self, writer):
        pass

    def restore_plan(self, destination):
        return DirectorySwapPlan(destination, "hello")


@hookimpl
def eternia_register_sources(register):
    register(HelloSource)
'''

BROKEN_PLUGIN = '''
import eternia_dependency_that_is_not_installed
'''


def install_distribution(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A real installed distribution: a dist-info directory and its modules, in ``site``."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[eternia_backup]\n" + "".join(f"{name} = {value}\n" for name, value in entry_points.items()))
    for module, code in modules.items():
        (site / f"{module}.py").write_text(code)


def site_env(site: Path, **extra: str) -> dict:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **extra}


def test_an_installed_entry_point_plugin_is_listed(tmp_path):
    site = tmp_path / "site"
    install_distribution(site, "eternia-hello", {"hello": "eternia_hello"}, {"eternia_hello": HELLO_PLUGIN})
    proc = run_cli("plugins", "--json", env=site_env(site))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["plugins"]
    assert {"kind": "source", "name": "hello", "plugin": "hello", "distribution": "eternia-hello",
            "version": "0.1", "class": "eternia_hello.HelloSource"} in rows
    assert ("source", "directory", "eternia_backup.builtin.directory") in {
        (r["kind"], r["name"], r["plugin"]) for r in rows}

    proc = run_cli("plugins", env=site_env(site))
    assert any(line.split() == ["source", "hello", "hello", "eternia-hello", "0.1"]
               for line in proc.stdout.splitlines()), proc.stdout


def test_a_plugin_that_fails_to_import_is_named_and_can_be_blocked(tmp_path):
    site = tmp_path / "site"
    install_distribution(site, "eternia-hello", {"hello": "eternia_hello"}, {"eternia_hello": HELLO_PLUGIN})
    install_distribution(site, "eternia-broken", {"broken": "eternia_broken"}, {"eternia_broken": BROKEN_PLUGIN})

    # Listed with its error (exit 1); the other plugins are listed and keep working.
    proc = run_cli("plugins", env=site_env(site))
    assert proc.returncode == 1, proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, proc.stdout
    assert failed[0].split()[1:5] == ["broken", "eternia_broken", "eternia-broken", "0.1:"]
    assert "eternia_dependency_that_is_not_installed" in failed[0]
    assert any(line.split()[:3] == ["source", "hello", "hello"] for line in proc.stdout.splitlines())
    warning = [line for line in proc.stderr.splitlines() if "'broken'" in line]
    assert len(warning) == 1 and f"{DISABLE_ENV}=broken" in warning[0], proc.stderr
    data = json.loads(run_cli("plugins", "--json", env=site_env(site)).stdout)
    assert [(f["plugin"], f["distribution"]) for f in data["failed"]] == [("broken", "eternia-broken")]

    # Other commands work; a config that uses a provider of the broken plugin is told why it is unknown.
    app = tmp_path / "app"
    (app / "data").mkdir(parents=True)
    (app / "data" / "f.txt").write_text("x")
    config = app / "eternia-backup.yaml"
    config.write_text("backup:\n  storage_path: backups\n")
    proc = run_cli("create", config=config, env=site_env(site))
    assert proc.returncode == 0, proc.stderr
    config.write_text("backup:\n  sources: [{type: brokensource, name: b}]\n")
    proc = run_cli("config", "check", config=config, env=site_env(site))
    assert proc.returncode == 2
    assert "unknown source 'brokensource'" in proc.stderr and "eternia_dependency_that_is_not_installed" in proc.stderr

    proc = run_cli("plugins", env=site_env(site, **{DISABLE_ENV: "broken"}))
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[:3] == ["source", "hello", "hello"] for line in proc.stdout.splitlines())
    assert "broken" not in proc.stdout
