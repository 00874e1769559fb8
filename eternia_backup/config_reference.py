"""The configuration reference (docs/configuration.md) and JSON Schema, generated from the models.

The pydantic models in :mod:`eternia_backup.config` and the source plugins'
``options_model`` are the only description of the ``backup:`` section; this
module renders them, so the page cannot drift from what is validated
(tests/test_docs.py compares the committed page with :func:`render_markdown`).
Regenerate the page with::

    python -m eternia_backup.config_reference > docs/configuration.md
"""

from __future__ import annotations

import importlib
import json
import sys
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .config import CONFIG_ENV, DEFAULT_CONFIG_NAME, ONE_OR_MANY, BackupModel, SourceModel
from .providers import SourceOptions

# documented here when installed
FIRST_PARTY_SOURCE_PLUGINS = ("eternia_backup_postgres", "eternia_backup_redis", "eternia_backup_mysql")
ENV_VALUE = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"  # a ${VAR} or ${VAR:-default} placeholder


# -- JSON Schema -------------------------------------------------------------------


def json_schema() -> dict:
    """The JSON Schema of a config file: an object whose ``backup`` property is the section.

    Other top-level keys are allowed (the section may live in the application's
    own YAML file). Constrained scalars also accept a ``${VAR}`` placeholder,
    since the environment is substituted before validation. A source of a
    documented type (:func:`source_types`) is checked against its options
    model; sources of other types only need ``type`` and ``name``.
    """
    section = BackupModel.model_json_schema(mode="validation")
    defs = section.pop("$defs", {})
    defs[SourceModel.__name__]["allOf"] = [_source_type_rule(name, model) for name, model in source_types()]
    for schema in (section, *defs.values(), *(r["then"] for r in defs[SourceModel.__name__]["allOf"])):
        for prop in schema.get("properties", {}).values():
            if isinstance(prop, dict):
                _allow_placeholder(prop)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "eternia-backup configuration",
        "description": "A YAML file with a backup: section; see docs/configuration.md.",
        "type": "object",
        "properties": {"backup": section},
        "required": ["backup"],
        "$defs": defs,
    }


def _source_type_rule(name: str, options: type[BaseModel]) -> dict:
    """if type == name then the keys are type, name and the options model's."""
    schema = options.model_json_schema(mode="validation")
    schema.pop("$defs", None)  # options models are flat; a nested one would need its $defs merged
    return {
        "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
        "then": {"properties": {"type": True, "name": True, **schema.get("properties", {})},
                 "required": schema.get("required", []), "additionalProperties": False},
    }


_PYDANTIC_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
_ANNOTATIONS = ("default", "description", "examples", "title", "expected")


def _allow_placeholder(prop: dict) -> None:
    """Let a constrained scalar also be a ``${VAR}``; fix bounds pydantic left in its own words."""
    kinds = prop.get("anyOf", [prop])
    for kind in kinds:
        for short, keyword in _PYDANTIC_BOUNDS.items():
            if short in kind:  # on Annotated[int, BeforeValidator] pydantic writes ge, not minimum
                kind[keyword] = kind.pop(short)
    if any(k.get("type") in ("object", "array") or "$ref" in k for k in kinds):
        return  # a mapping or list: only the strings inside it are expanded
    if all(set(k) - set(_ANNOTATIONS) <= {"type"} and k.get("type") in ("string", "null") for k in kinds):
        return  # any string already matches
    alternatives = prop.pop("anyOf", None) or [{k: prop.pop(k) for k in list(prop) if k not in _ANNOTATIONS}]
    prop["anyOf"] = [*alternatives, {"type": "string", "pattern": f"^{ENV_VALUE}$"}]


# -- Markdown ----------------------------------------------------------------------


def source_types() -> list[tuple[str, type[BaseModel]]]:
    """(type name, options model) of the built-in sources and installed first-party source plugins."""
    from .plugins import build_registry, get_plugin_manager

    extra = []
    for module in FIRST_PARTY_SOURCE_PLUGINS:
        try:
            extra.append(importlib.import_module(module))
        except ImportError:
            pass
    registry = build_registry(get_plugin_manager(load_entry_points=False, extra_plugins=tuple(extra)))
    return [(name, registry.get("source", name).options_model) for name in registry.names("source")]


def render_markdown() -> str:
    """docs/configuration.md, from the models."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from the pydantic models by "
        "`python -m eternia_backup.config_reference > docs/configuration.md`; do not edit by hand. -->",
        "",
        "The configuration is the `backup:` section of a YAML file: `--config PATH`, else "
        f"`${CONFIG_ENV}`, else `./{DEFAULT_CONFIG_NAME}`. Every key is optional unless marked "
        "**required**; a section with no keys at all backs up the directory `data/` beside the file "
        "into `backups/` beside it. Unknown keys are errors, reported with the key's path. "
        "`eternia-backup config check` validates a file, `config show` prints the effective configuration "
        "(secrets masked).",
        "",
        "* Any string value may contain `${VAR}` or `${VAR:-default}`: replaced with the environment "
        "variable before validation (`default` when it is unset or empty). A missing variable without a "
        "default is an error.",
        "* Relative paths are relative to the directory of the config file.",
        "* A value shown as *not set* is absent (or `null`); the Description says what happens then.",
        "",
        "Sections:",
        "",
    ]
    sections = list(_sections("backup", BackupModel))
    for path, _ in sections:
        out.append(f"* [`{path}`](#{_anchor(path)})")
    out.append("* [Source types](#source-types): " + ", ".join(
        f"[`{name}`](#{_anchor('source type ' + name)})" for name, _ in source_types()))
    out.append("")
    for path, model in sections:
        out += [f"## {path}", ""]
        if model.__doc__ and model.__doc__.strip() and path != "backup":
            out += [model.__doc__.strip().splitlines()[0], ""]
        out += _table(model, skip=())
        if model is SourceModel:
            out += ["Every source also takes these keys (run around its backup, to quiesce the "
                    "application for a consistent snapshot):", ""]
            out += _table(SourceOptions, skip=())
            out += ["The other keys depend on `type`; see [Source types](#source-types).", ""]
    out += ["## Source types", "",
            "The keys of a source beside `type`, `name`, `before` and `after`. Plugins add more types; "
            "`eternia-backup plugins` lists the installed ones.", ""]
    common = set(SourceOptions.model_fields)
    for name, options in source_types():
        out += [f"### source type {name}", ""]
        out += _table(options, skip=common)
    return "\n".join(out).rstrip() + "\n"


def _sections(path: str, model: type[BaseModel]):
    """(key path, model) of the section and every nested model, depth first, in field order."""
    yield path, model
    for key, info in model.model_fields.items():
        nested = _nested_model(info.annotation)
        if nested is not None:
            origin = typing.get_origin(_strip_optional(info.annotation))
            is_list = origin is list and ONE_OR_MANY not in info.metadata
            suffix = "[]" if is_list else ".<source>" if origin is dict else ""
            yield from _sections(f"{path}.{key}{suffix}", nested)


def _table(model: type[BaseModel], skip) -> list[str]:
    rows = ["| Key | Type | Default | Allowed values | Example | Description |",
            "|-----|------|---------|----------------|---------|-------------|"]
    for key, info in model.model_fields.items():
        if key in skip:
            continue
        if not info.description or not info.examples:
            raise ValueError(f"{model.__name__}.{key} has no description or no examples; "
                             "give its Field(...) both, they are its documentation")
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        allowed = extra.get("expected") or _allowed(info.annotation)
        example = f"`{key}: {_yaml(info.examples[0])}`"
        type_name = _type_name(info.annotation)
        if ONE_OR_MANY in info.metadata:  # notify.<kind>
            type_name = "mapping or list of mappings"
        rows.append("| " + " | ".join(_cell(c) for c in (
            f"`{key}`", type_name, _default(info), allowed, example, info.description)) + " |")
    return rows + [""]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _yaml(value: Any) -> str:
    """A value as one line of YAML flow style (JSON is valid YAML)."""
    if isinstance(value, str) and value and not any(c in value for c in ":{}[],&*#?|<>=!%@`'\"") \
            and value.strip() == value and value.lower() not in ("true", "false", "null", "yes", "no", "on", "off"):
        return value
    return json.dumps(value)


def _default(info: FieldInfo) -> str:
    if info.default_factory is list and ONE_OR_MANY in info.metadata:
        return "*not set*"
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, BaseModel):
            return "see below"
        return f"`{_yaml(value)}`"
    if info.default is PydanticUndefined:
        return "**required**"
    if info.default is None:
        return "*not set*"
    return f"`{_yaml(info.default)}`"


def _strip_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip_optional(annotation)
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    elif typing.get_origin(annotation) is dict:  # a mapping of names to settings (drill.checks)
        annotation = typing.get_args(annotation)[1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return "string"
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(names))
    if origin is list:
        inner = _type_name(args[0]) if args else "value"
        return "list of " + ("mappings" if inner == "mapping" else inner + "s")
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(annotation, str(annotation))


def _allowed(annotation: Any) -> str:
    annotation = _strip_optional(annotation)
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    return "any " + _type_name(annotation)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    kept = "".join(c for c in heading.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--schema"]:
        print(json.dumps(json_schema(), indent=2))
    elif not args:
        sys.stdout.write(render_markdown())
    else:
        print("usage: python -m eternia_backup.config_reference [--schema]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
