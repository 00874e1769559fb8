"""Built-in providers and plugins use only the public plugin API (``eternia_backup.api``).

Every module of the built-ins, the first-party plugins and the example plugins is
read (not imported) and each import of ``eternia_backup`` is checked: only
``eternia_backup.api`` is allowed (plus ``eternia_backup.testing``, the
conformance kit, in tests). A built-in may build on another built-in plugin
module, as a third-party plugin may depend on another plugin's package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILTINS = sorted((ROOT / "eternia_backup" / "builtin").glob("*.py"))
PLUGINS = sorted(p for p in (ROOT / "plugins").glob("*/*/*.py"))
EXAMPLES = sorted(p for p in (ROOT / "examples" / "plugins").glob("*/*/*.py")
                  if p.parent.name != "tests") if (ROOT / "examples" / "plugins").exists() else []
PLUGIN_TESTS = sorted((ROOT / "examples" / "plugins").glob("*/tests/*.py")) \
    if (ROOT / "examples" / "plugins").exists() else []


def eternia_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of an eternia_backup module, names imported from it included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "eternia_backup"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "eternia_backup":
            if node.module == "eternia_backup":  # from eternia_backup import x: x may be a submodule
                found += [(node.lineno, f"eternia_backup.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def private(path: Path, allowed: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line}: imports {module}" for line, module in eternia_imports(path)
            if not any(module == a or (a.endswith(".") and module.startswith(a)) for a in allowed)]


@pytest.mark.parametrize("path", BUILTINS, ids=lambda p: p.name)
def test_builtin_providers_import_only_the_public_api(path):
    assert private(path, ("eternia_backup.api", "eternia_backup.builtin.")) == []


@pytest.mark.parametrize("path", PLUGINS + EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path):
    assert private(path, ("eternia_backup.api",)) == []


@pytest.mark.parametrize("path", PLUGIN_TESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugin_tests_import_only_the_public_api_and_the_kit(path):
    assert private(path, ("eternia_backup.api", "eternia_backup.testing", "eternia_backup.testing.")) == []


def test_the_check_catches_a_private_import(tmp_path):
    module = tmp_path / "plugin.py"
    module.write_text("from eternia_backup.fsutil import remove_tree\nfrom eternia_backup import plans, api\n"
                      "import eternia_backup.redact\nfrom eternia_backup.api import Source\n")
    found = [m for _, m in eternia_imports(module)]
    assert found == ["eternia_backup.fsutil", "eternia_backup.plans", "eternia_backup.api",
                     "eternia_backup.redact", "eternia_backup.api"]
    assert [m for _, m in eternia_imports(module) if m != "eternia_backup.api"] == \
        ["eternia_backup.fsutil", "eternia_backup.plans", "eternia_backup.redact"]


def test_every_builtin_and_the_first_party_plugins_are_checked():
    assert {p.stem for p in BUILTINS} >= {"directory", "sqlite", "command", "tar", "compressions",
                                          "local_target", "fsspec_target", "s3_target", "webhook"}
    assert {"eternia_backup_postgres", "eternia_backup_redis",
            "eternia_backup_mysql"} <= {p.parent.name for p in PLUGINS}
