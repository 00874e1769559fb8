"""The configuration reference and JSON Schema agree with the models that validate configs.

docs/configuration.md is generated (``python -m eternia_backup.config_reference
> docs/configuration.md``); a key added to a model and not to the page fails
here until the page is regenerated.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import ROOT
from eternia_backup.config import BackupModel, parse_config
from eternia_backup.config_reference import json_schema, render_markdown, source_types
from eternia_backup.errors import ConfigError

PAGE = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "examples" / "app" / "eternia-backup.yaml"
REGENERATE = "regenerate it: python -m eternia_backup.config_reference > docs/configuration.md"


def _example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_configuration_page_is_what_the_models_generate():
    pytest.importorskip("eternia_backup_postgres", reason="the page documents the postgres plugin's source type")
    pytest.importorskip("eternia_backup_redis", reason="the page documents the redis plugin's source type")
    pytest.importorskip("eternia_backup_mysql", reason="the page documents the mysql plugin's source type")
    assert PAGE.read_text() == render_markdown(), f"docs/configuration.md is out of date; {REGENERATE}"


def test_page_names_every_key_and_source_type():
    text = render_markdown()
    for name, model in [("backup", BackupModel), *source_types()]:
        for key in model.model_fields:
            assert f"| `{key}` |" in text, f"{name}: key {key!r} missing"
    assert {"directory", "sqlite", "command"} <= {name for name, _ in source_types()}


# -- the JSON Schema ------------------------------------------------------------------


def _resolve(schema: dict, defs: dict) -> dict:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _unknown_keys(value, schema: dict, defs: dict, path: str = "") -> list[str]:
    """Key paths in ``value`` that ``schema`` does not allow (keys only: the structure an editor checks)."""
    schema = _resolve(schema, defs)
    for branch in schema.get("anyOf", []):
        branch = _resolve(branch, defs)
        if (isinstance(value, dict) and branch.get("type", "object") == "object" and "properties" in branch) or \
                (isinstance(value, list) and branch.get("type") == "array"):
            schema = branch
            break
    if isinstance(value, list):
        items = schema.get("items", {})
        return [p for i, v in enumerate(value) for p in _unknown_keys(v, items, defs, f"{path}[{i}]")]
    if not isinstance(value, dict) or "properties" not in schema:
        return []
    for rule in schema.get("allOf", []):  # per source type: if type == X then X's keys
        if value.get("type") == rule["if"]["properties"]["type"]["const"]:
            schema = {**schema, **rule["then"]}
    found = []
    for key, v in value.items():
        prop = schema["properties"].get(key)
        if prop is None:
            if schema.get("additionalProperties", True) is False:
                found.append(f"{path}.{key}".lstrip("."))
            continue
        if isinstance(prop, dict):
            found += _unknown_keys(v, prop, defs, f"{path}.{key}")
    return found


def test_schema_wraps_the_backup_section():
    schema = json_schema()
    assert schema["type"] == "object" and schema["required"] == ["backup"]
    section = schema["properties"]["backup"]
    assert section["additionalProperties"] is False
    assert set(section["properties"]) == set(BackupModel.model_fields)
    for name, definition in schema["$defs"].items():
        if name != "SourceModel":  # a source's other keys depend on its type
            assert definition["additionalProperties"] is False, name
    for rule in schema["$defs"]["SourceModel"]["allOf"]:
        assert rule["then"]["additionalProperties"] is False


def test_schema_and_models_accept_the_example_and_reject_an_unknown_key():
    schema, document = json_schema(), _example()
    assert _unknown_keys(document, schema, schema["$defs"]) == []
    parse_config(document["backup"], base_dir=EXAMPLE.parent, environ={})

    misspelt = copy.deepcopy(document)
    misspelt["backup"]["retension_days"] = 7
    misspelt["backup"]["sources"][0]["exclud"] = ["*.log"]
    assert sorted(_unknown_keys(misspelt, schema, schema["$defs"])) == ["backup.retension_days",
                                                                       "backup.sources[0].exclud"]
    with pytest.raises(ConfigError, match="retension_days"):
        parse_config(misspelt["backup"], base_dir=EXAMPLE.parent, environ={})


def test_schema_validates_like_the_loader():
    """Full validation with the jsonschema library (the test extra installs it), as an editor would."""
    import jsonschema

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    document = _example()
    assert list(validator.iter_errors(document)) == []
    placeholders = copy.deepcopy(document)
    placeholders["backup"].update(retention_days="${DAYS:-7}", frequency="${FREQUENCY}")
    placeholders["backup"]["sources"].append({"type": "from-a-plugin", "name": "x", "anything": 1})
    assert list(validator.iter_errors(placeholders)) == []
    for bad in ({"retension_days": 7}, {"retention_days": -1}, {"frequency": "often"},
                {"sources": [{"type": "directory", "name": "d"}]}):  # directory needs path
        broken = copy.deepcopy(document)
        broken["backup"].update(bad)
        assert list(validator.iter_errors(broken)), bad


def test_config_schema_command_prints_the_schema_editors_use(tmp_path):
    import json

    from conftest import run_cli_in_process as run_cli

    proc = run_cli("config", "schema", cwd=tmp_path)  # needs no config file
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json_schema()
