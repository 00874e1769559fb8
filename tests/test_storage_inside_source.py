"""Issue 9, item 1: storage inside a source is never backed up and never replaced by a restore."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from eternia_backup import journal
from eternia_backup.fsutil import sibling
from eternia_backup.plans import DirectorySwapPlan

from conftest import run_cli_in_process as run_cli  # the CLI in this process (see conftest)


def _tree(root: Path, skip: tuple[str, ...]) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for f in filenames:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_storage_inside_the_default_source(tmp_path):
    """The issue's reproduction: storage_path data/backups with the default source data/."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(20):
        (data / f"f{i}.bin").write_bytes(os.urandom(50_000))
    cfg = tmp_path / "eternia-backup.yaml"
    cfg.write_text(yaml.safe_dump({"backup": {"storage_path": "data/backups"}}))

    check = _ok(run_cli("config", "check", config=cfg)).stdout.splitlines()
    notes = [line for line in check if line.startswith("note:")]
    assert len(notes) == 1, check
    assert "source 'data'" in notes[0] and "backups/" in notes[0] and "excluded" in notes[0]

    states = []
    for i in range(4):
        (data / "counter.txt").write_text(str(i))
        states.append(_tree(data, skip=("backups", ".backups.eternia")))
        _ok(run_cli("create", config=cfg))
    listed = json.loads(_ok(run_cli("list", "--json", config=cfg)).stdout)["backups"]
    assert len(listed) == 4
    sizes = [b["size"] for b in reversed(listed)]
    assert max(sizes) < 1.1 * min(sizes), f"sizes grow: {sizes}"  # no backup holds the earlier ones
    ids = [b["backup_id"] for b in reversed(listed)]  # oldest first
    archives_before = {p.name: p.stat().st_ino for p in (data / "backups").iterdir()}

    (data / "f3.bin").unlink()
    (data / "added-later.txt").write_text("after the backups")
    _ok(run_cli("restore", ids[1], "--yes", config=cfg))

    assert _tree(data, skip=("backups", ".backups.eternia")) == states[1]
    assert {p.name: p.stat().st_ino for p in (data / "backups").iterdir()} == archives_before
    verified = run_cli("verify", "--all", config=cfg)
    assert verified.returncode == 0 and verified.stdout.count("ok ") == 4, verified.stdout + verified.stderr
    for n, backup_id in enumerate(ids):
        out = tmp_path / f"out{n}"
        _ok(run_cli("restore", backup_id, "--to", str(out), "--yes", config=cfg))
        assert _tree(out / "data", skip=()) == states[n]
    assert [n for n in os.listdir(tmp_path) if ".eternia-" in n] == []  # no staging left beside data/


def test_an_old_backup_that_holds_the_storage_does_not_replace_it(tmp_path):
    """A backup made before storage was excluded holds backups/: the live storage wins on restore."""
    dest = tmp_path / "data"
    (dest / "backups").mkdir(parents=True)
    (dest / "backups" / "live.manifest.json").write_text("live")
    (dest / "file").write_text("old")
    plan = DirectorySwapPlan(dest, "source 'data'", carry=(dest / "backups",))
    plan.prepare()
    (plan.staging_dir / "backups").mkdir()
    (plan.staging_dir / "backups" / "stale.tar.zst").write_text("from the archive")
    (plan.staging_dir / "file").write_text("restored")
    plan.commit()
    plan.discard()
    assert (dest / "file").read_text() == "restored"
    assert sorted(os.listdir(dest / "backups")) == ["live.manifest.json"]


def test_journal_finishes_a_swap_that_died_while_carrying_the_storage(tmp_path):
    """Killed after staging, before the swap: the next run carries the storage over, then swaps."""
    dest = tmp_path / "data"
    (dest / "backups").mkdir(parents=True)
    (dest / "backups" / "a.tar.zst").write_text("A")
    (dest / "backups" / "b.tar.zst").write_text("B")
    (dest / "file").write_text("old")
    staging = sibling(dest, "restore")
    (staging / "backups").mkdir(parents=True)
    os.link(dest / "backups" / "a.tar.zst", staging / "backups" / "a.tar.zst")  # died half way through
    (staging / "file").write_text("restored")
    st = staging.stat()
    path = tmp_path / "journal.json"
    journal.write(path, "x", [{"kind": "directory-swap", "destination": str(dest), "staging": str(staging),
                               "staged_inode": [st.st_dev, st.st_ino], "carry": ["backups"]}])
    journal.finish(path)
    assert (dest / "file").read_text() == "restored"
    assert sorted(os.listdir(dest / "backups")) == ["a.tar.zst", "b.tar.zst"]
    assert not staging.exists()


def test_the_progress_total_leaves_out_storage_inside_the_source(tmp_path):
    """The bar's total is what the backup reads: the backups stored inside the source do not count."""
    from eternia_backup import BackupManager

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "state.bin").write_bytes(os.urandom(100_000))
    config = tmp_path / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {"storage_path": "data/backups"}}))
    mgr = BackupManager.from_config(config)
    for _ in range(3):
        mgr.create_backup()
    assert sum(p.stat().st_size for p in (tmp_path / "data" / "backups").glob("*.tar.zst")) > 250_000
    assert mgr.sources["data"].estimate_size() == 100_000
