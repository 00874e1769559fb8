"""docs/plugins.md covers the whole plugin contract, the contract documents itself, and plugins keep to it.

Fails when a hook of :mod:`eternia_backup.hookspecs` or a name of
``eternia_backup.api.__all__`` is not mentioned on the page, when a public
class or function of the API (or a public method of such a class) has no
docstring, or when a built-in provider, the postgres plugin, an example plugin
or the conformance kit imports a private module of ``eternia_backup``.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from eternia_backup import api, hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "plugins.md").read_text()
HOOKS = sorted(name for name, obj in vars(hookspecs).items() if hasattr(obj, "eternia_backup_spec"))
KIT = ["TargetConformance", "SourceConformance", "ArchiverConformance", "CompressionConformance"]


def mentioned(name: str) -> bool:
    return f"`{name}`" in DOCS or f"`{name}(" in DOCS or f"### {name}" in DOCS


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    assert f"### {hook}" in DOCS, f"docs/plugins.md has no '### {hook}' section"


@pytest.mark.parametrize("name", api.__all__)
def test_every_public_api_name_is_mentioned(name):
    assert mentioned(name), f"docs/plugins.md does not mention `{name}` (eternia_backup.api.__all__)"


@pytest.mark.parametrize("name", KIT)
def test_every_kit_class_is_mentioned(name):
    assert mentioned(name), f"docs/plugins.md does not mention the conformance kit's `{name}`"


def public_callables():
    for name in api.__all__:
        obj = getattr(api, name)
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj):
            yield name, obj
            if not obj.__module__.startswith("eternia_backup"):
                continue
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                if inspect.isfunction(func):
                    yield f"{name}.{attr}", getattr(obj, attr) if not isinstance(value, property) else value


@pytest.mark.parametrize("name,obj", list(public_callables()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_class_and_function_has_a_docstring(name, obj):
    assert (inspect.getdoc(obj) or "").strip(), f"eternia_backup.api: {name} has no docstring"


def test_the_checks_can_fail():
    assert not mentioned("NoSuchApiName")
    assert not (inspect.getdoc(lambda: None) or "").strip()


# -- plugins import only the public API ---------------------------------------------------

PUBLIC = {"eternia_backup.api"}
PLUGIN_MODULES = {
    # built-ins may build on one another (the S3 target on the fsspec one)
    **{p: PUBLIC | {"eternia_backup.builtin.*"} for p in sorted((ROOT / "eternia_backup" / "builtin").glob("*.py"))},
    **{p: PUBLIC for p in sorted((ROOT / "plugins").glob("*/*/*.py"))},
    **{p: PUBLIC for p in sorted((ROOT / "examples" / "plugins").glob("*/eternia_backup_*/*.py"))},
    **{p: PUBLIC | {"eternia_backup.testing"} for p in sorted((ROOT / "examples" / "plugins").glob("*/tests/*.py"))},
    # the kit: the public API, and BackupManager from the package
    ROOT / "eternia_backup" / "testing" / "conformance.py": PUBLIC | {"eternia_backup"},
}


def eternia_imports(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every import of eternia_backup in ``path``, relative imports resolved."""
    package = package or ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            names = [base]
        else:
            continue
        found += [(node.lineno, n) for n in names if n == "eternia_backup" or n.startswith("eternia_backup.")]
    return found


def allowed(module: str, rules: set[str]) -> bool:
    return any(module == r or (r.endswith(".*") and module.startswith(r[:-1])) for r in rules)


@pytest.mark.parametrize("path", sorted(PLUGIN_MODULES), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path):
    for line, module in eternia_imports(path):
        assert allowed(module, PLUGIN_MODULES[path]), f"{path.relative_to(ROOT)}:{line} imports private {module}"


def test_the_import_check_sees_private_and_relative_imports(tmp_path):
    assert PLUGIN_MODULES and all(p.exists() for p in PLUGIN_MODULES)
    assert not allowed("eternia_backup.fsutil", PUBLIC) and allowed("eternia_backup.builtin.tar", {"eternia_backup.builtin.*"})
    fake = tmp_path / "probe.py"  # as if it were eternia_backup/builtin/probe.py
    fake.write_text("from ..fsutil import remove_tree\nfrom . import tar\nimport eternia_backup.plugins\n")
    assert [m for _, m in eternia_imports(fake, "eternia_backup.builtin")] == [
        "eternia_backup.fsutil", "eternia_backup.builtin", "eternia_backup.plugins"]
