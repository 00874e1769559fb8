"""Every command's ``--json`` output has the shape docs/json.md documents.

docs/json.md holds one example document per command; each command is run for
real and its output compared with the example: the same keys (a key written
``<name>`` stands for any key), values of the same JSON type (null matches
anything, an example list's first item describes every item). A field added to
an output and not to the page fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli_in_process as run_cli  # the CLI in this process (see conftest)

DOC = ROOT / "docs" / "json.md"


def documented_examples() -> dict[str, list[dict]]:
    """``## heading`` -> the JSON blocks under it."""
    examples: dict[str, list[dict]] = {}
    heading = None
    for block in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        heading, _, body = block.partition("\n")
        examples[heading.strip()] = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", body, re.S)]
    return examples


def shape_problems(actual, example, where="$") -> list[str]:
    if example is None or actual is None:
        return []
    if isinstance(example, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {type(actual).__name__}"]
        wildcard = [k for k in example if k.startswith("<")]
        if wildcard:
            return [p for k, v in actual.items() for p in shape_problems(v, example[wildcard[0]], f"{where}.{k}")]
        problems = [f"{where}.{k}: not documented in docs/json.md" for k in actual if k not in example]
        return problems + [p for k, v in actual.items() if k in example
                           for p in shape_problems(v, example[k], f"{where}.{k}")]
    if isinstance(example, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {type(actual).__name__}"]
        return [p for i, item in enumerate(actual) for p in shape_problems(item, example[0], f"{where}[{i}]")] \
            if example else []
    kinds = {bool: (bool,), int: (int, float), float: (int, float), str: (str,)}
    expected = kinds[type(example)]
    if not isinstance(actual, expected) or (isinstance(actual, bool) and not isinstance(example, bool)):
        return [f"{where}: expected {type(example).__name__}, got {actual!r}"]
    return []


def run_json(*args, config: Path, status: int = 0) -> dict:
    proc = run_cli(*args, "--json", config=config)
    assert proc.returncode == status, (args, proc.returncode, proc.stdout, proc.stderr)
    document = json.loads(proc.stdout)  # exactly one document: json.loads refuses trailing data
    assert document["version"] == 1, document
    return document


def assert_documented(document: dict, heading: str, index: int = 0) -> None:
    example = documented_examples()[heading][index]
    problems = shape_problems(document, example)
    assert not problems, "\n".join(problems)


def test_the_page_documents_every_command_of_the_cli():
    from eternia_backup.cli import COMMANDS

    headings = " ".join(documented_examples())
    for command in COMMANDS:
        if command != "completion":  # prints a shell script
            assert command in headings, f"docs/json.md has no section for {command}"


def test_the_shape_checker_catches_an_undocumented_field_and_a_wrong_type():
    assert shape_problems({"a": 1, "b": 2}, {"a": 0}) == ["$.b: not documented in docs/json.md"]
    assert shape_problems({"a": "x"}, {"a": 0}) == ["$.a: expected int, got 'x'"]
    assert shape_problems({"t": {"x": {"n": True}}}, {"t": {"<target>": {"n": 1}}})
    assert shape_problems([{"a": 1}], [{"a": 1}]) == []


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("hello")
    config = tmp_path / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {
        "storage_path": "backups", "retention": {"keep_last": 1}, "timezone": "Europe/Berlin"}}))
    return config


def test_each_command_prints_one_documented_document(project, tmp_path):
    created = run_json("create", config=project)
    assert_documented(created, "create")
    assert created["ok"] is True and created["copies"]
    assert_documented(run_json("create", config=project), "create")

    listed = run_json("list", config=project)
    assert_documented(listed, "list")
    assert len(listed["backups"]) == 2
    assert all(b["created_at"].endswith("Z") for b in listed["backups"])

    assert_documented(run_json("verify", config=project), "verify")
    assert_documented(run_json("verify", "--all", config=project), "verify")
    assert_documented(run_json("restore", "latest", "--dry-run", config=project), "restore")
    assert_documented(run_json("restore", "latest", "--to", str(tmp_path / "r"), "--yes", config=project),
                      "restore")
    archive = Path(created["location"])
    assert_documented(run_json("download", str(archive), "--to", str(tmp_path / "dl"), config=project), "download")

    drill = run_json("drill", config=project)
    assert_documented(drill, "drill")
    assert drill["ok"] is True and drill["started_at"].endswith("Z")

    status = run_json("status", config=project)
    assert_documented(status, "status")
    assert status["drill"]["ok"] is True and status["drill"]["last_run"].endswith("Z")
    assert status["next_run"].endswith("Z") and status["newest_backup"]["created_at"].endswith("Z")
    assert all(t["last_success"].endswith("Z") for t in status["targets"].values())

    assert_documented(run_json("cleanup", "--dry-run", config=project), "cleanup")
    cleaned = run_json("cleanup", config=project)
    assert_documented(cleaned, "cleanup")
    assert cleaned["deleted_count"] == 1

    assert_documented(run_json("plugins", config=project), "plugins")
    assert_documented(run_json("config", "check", config=project), "config check, config show", 0)
    shown = run_json("config", "show", config=project)
    assert set(shown) == {"version", "config"} and shown["config"]["timezone"] == "Europe/Berlin"

    assert_documented(run_json("keygen", "-o", str(tmp_path / "key.txt"), config=project), "init, keygen, run", 1)
    assert_documented(run_json("init", "--path", str(tmp_path / "new.yaml"), config=project), "init, keygen, run", 0)


def test_errors_are_one_documented_document_with_the_exit_status(project, tmp_path):
    example = documented_examples()["Errors"][0]
    missing = run_json("list", config=tmp_path / "nowhere.yaml", status=2)
    assert not shape_problems(missing, example)
    assert missing["error"]["code"] == "config" and "eternia-backup init" in missing["error"]["message"]

    nothing = run_json("restore", "latest", "--dry-run", config=project, status=1)
    assert nothing["error"]["code"] == "not_found" and nothing["error"]["exit_status"] == 1

    bad_usage = run_json("restore", config=project, status=2)  # argparse: BACKUP is required
    assert bad_usage["error"]["code"] == "usage"

    run_json("create", config=project)
    no_source = run_json("restore", "latest", "--source", "nope", "--to", str(tmp_path / "r"), config=project,
                         status=2)
    assert no_source["error"]["code"] == "usage" and "nope" in no_source["error"]["message"]
