"""Every YAML block in README.md and docs/ passes ``config check`` as it is written.

A user copies these blocks first. Placeholders that need a real value are written
``${VAR}``; the test sets each such variable (an age recipient where one is
needed). Plugins that a page defines in its own Python blocks (docs/plugins.md's
worked example) are loaded from those blocks, as the page tells its reader to.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from eternia_backup import BackupManager
from eternia_backup.config import load_config
from eternia_backup.plugins import get_plugin_manager

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "plugins").glob("*/README.md")), *sorted((ROOT / "examples" / "plugins").glob("*/README.md"))]


def blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), re.S | re.M)


def yaml_blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for i, text in enumerate(blocks(page, "ya?ml")):
            found.append((f"{page.relative_to(ROOT)}#{i + 1}", text))
    return found


def page_plugins(page: Path) -> list[types.ModuleType]:
    """Modules made from the page's Python blocks that implement hooks."""
    modules = []
    for i, code in enumerate(blocks(page, "python")):
        if not re.search(r"from eternia_backup(\.api)? import .*hookimpl", code) or "\nclass " not in code:  # a whole plugin module
            continue
        module = types.ModuleType(f"docs_example_{page.stem}_{i}")
        exec(compile(code, f"{page}#python{i + 1}", "exec"), module.__dict__)
        modules.append(module)
    return modules


def test_the_pages_hold_yaml_blocks_to_check():
    names = [name for name, _ in yaml_blocks()]
    assert any(n.startswith("README.md") for n in names) and len(names) >= 3, names


@pytest.mark.parametrize("name,text", yaml_blocks(), ids=[n for n, _ in yaml_blocks()])
def test_yaml_block_passes_config_check(name, text, tmp_path, monkeypatch):
    for var in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)):
        if "RECIPIENT" in var:
            from eternia_backup.encryption import generate_identity_file

            value = generate_identity_file(tmp_path / f"{var}.key")
        else:
            value = "placeholder-value"
        monkeypatch.setenv(var, value)
    document = yaml.safe_load(text)
    assert isinstance(document, dict) and "backup" in document, f"{name}: not a whole config with backup:"
    config_file = tmp_path / "eternia-backup.yaml"
    config_file.write_text(text)
    page = ROOT / name.split("#")[0]
    config = load_config(config_file)
    BackupManager(config, plugin_manager=get_plugin_manager(extra_plugins=tuple(page_plugins(page))))
