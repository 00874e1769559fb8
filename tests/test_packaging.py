"""What a user gets from ``pip install``: the built sdist and wheels, installed into a fresh venv.

Both distributions are built as a release would build them (``python -m build``:
the sdist first, then the wheel from the unpacked sdist, so a file missing from
the sdist breaks the wheel too) and installed, not editable, into a new venv.
The commands then run from a directory outside the repository, so nothing can
come from the source tree. Dependencies come from the package index through
pip's cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

PLUGINS = [ROOT / "plugins" / "eternia-backup-postgres", ROOT / "plugins" / "eternia-backup-redis",
           ROOT / "plugins" / "eternia-backup-mysql"]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

pytestmark = pytest.mark.slow


def _run(cmd: list, *, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env() -> dict:
    """The environment without anything that could point back into the repository."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "ETERNIA_BACKUP_CONFIG", "ETERNIA_ENV",
            "ETERNIA_BACKUP_DISABLE_PLUGINS")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> Path:
    """sdist + wheel of eternia-backup and of the first-party plugins, in one directory."""
    out = tmp_path_factory.mktemp("dist")
    for project in (ROOT, *PLUGINS):
        _run([sys.executable, "-m", "build", "--outdir", out, project], cwd=out)
    return out


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {directory}, found {[p.name for p in found]}"
    return found[0]


def test_sdist_holds_what_its_tests_need(dists):
    with tarfile.open(_one(dists, f"eternia_backup-{VERSION}.tar.gz")) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = {"LICENSE", "README.md", "pyproject.toml", "tests/conftest.py", "tests/test_packaging.py",
              "examples/app/make_state.py", "examples/app/eternia-backup.yaml", "docs/plugins.md",
              "docs/configuration.md", "plugins/eternia-backup-postgres/pyproject.toml",
              "plugins/eternia-backup-redis/pyproject.toml",
              "plugins/eternia-backup-mysql/pyproject.toml",
              "eternia_backup/py.typed"}
    assert needed <= names, f"missing from the sdist: {sorted(needed - names)}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.parametrize("name, typed", [("eternia_backup", True), ("eternia_backup_postgres", False),
                                              ("eternia_backup_redis", False), ("eternia_backup_mysql", False)])
def test_wheel_carries_license_and_markers(dists, name, typed):
    with zipfile.ZipFile(_one(dists, f"{name}-{VERSION}-py3-none-any.whl")) as whl:
        names = set(whl.namelist())
        metadata = whl.read(f"{name}-{VERSION}.dist-info/METADATA").decode()
    assert f"{name}-{VERSION}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: MIT" in metadata
    if typed:
        assert f"{name}/py.typed" in names


def test_installed_wheels_work_from_an_unrelated_directory(dists, tmp_path):
    assert not tmp_path.resolve().is_relative_to(ROOT), "the work directory must be outside the repository"
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    env = _clean_env()
    _run([bin_dir / "python", "-m", "pip", "install", "--quiet",
          _one(dists, "eternia_backup-*.whl"), _one(dists, "eternia_backup_postgres-*.whl"),
          _one(dists, "eternia_backup_redis-*.whl"),
          _one(dists, "eternia_backup_mysql-*.whl")], cwd=tmp_path, env=env)

    work = tmp_path / "app"
    work.mkdir()
    located = _run([bin_dir / "python", "-c", "import eternia_backup; print(eternia_backup.__file__)"],
                   cwd=work, env=env)
    assert Path(located.stdout.strip()).is_relative_to(env_dir), located.stdout

    def cli(*args: str) -> subprocess.CompletedProcess:
        return _run([bin_dir / "eternia-backup", *args], cwd=work, env=env, timeout=120)

    assert VERSION in cli("--version").stdout
    plugins = cli("plugins").stdout
    assert "postgres" in plugins and "eternia-backup-redis" in plugins and "eternia-backup-mysql" in plugins

    (work / "data").mkdir()
    (work / "data" / "notes.txt").write_text("first contact\n")
    cli("init")
    assert (work / "eternia-backup.yaml").is_file()
    cli("create")
    assert "data" in cli("list").stdout
    cli("restore", "latest", "--to", str(tmp_path / "restored"), "--yes")
    assert (tmp_path / "restored" / "data" / "notes.txt").read_text() == "first contact\n"
