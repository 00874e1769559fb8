"""docs/plugins.md covers the whole plugin contract, and the contract documents itself.

Fails when a hook of :mod:`eternia_backup.hookspecs` or a name of
``eternia_backup.api.__all__`` is not mentioned on the page, or when a public
class or function of the API (or a public method of such a class) has no
docstring. (tests/test_private_imports.py checks that plugins import nothing else.)
"""

from __future__ import annotations

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

