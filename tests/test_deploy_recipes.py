"""examples/deploy/: the recipes are checked as far as this machine can check them.

systemd units with systemd-analyze (verify, and the security exposure offline),
every YAML document parsed (Kubernetes multi-document files, compose), the
config carried by each recipe through the real ``config check``, the cron line's
schedule through cronsim and its commands through the CLI's own parser, and the
Dockerfile's commands against the documented install line, the package's extras
and its console script.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from cronsim import CronSim

from conftest import ROOT, run_cli
from eternia_backup.cli import build_parser

DEPLOY = ROOT / "examples" / "deploy"
HOST = DEPLOY / "host"
UNITS = [HOST / "eternia-backup.service", HOST / "eternia-backup-create.service", HOST / "eternia-backup-create.timer"]
INSTALLED = "/opt/eternia-backup/bin/eternia-backup"  # where the recipes expect the CLI (README's venv)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# values for the ${VAR}s the recipes' configs read (from a Secret, an EnvironmentFile, .env)
RECIPE_ENV = {"S3_BUCKET": "myapp-backups", "S3_ENDPOINT_URL": "http://seaweedfs:8333"}


def _k8s(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d is not None]


def _configmap_config(name: str) -> str:
    [cm] = [d for d in _k8s(name) if d["kind"] == "ConfigMap"]
    return cm["data"]["eternia-backup.yaml"]


def _recipe_configs() -> list[tuple[str, str]]:
    return [("host/eternia-backup.yaml", (HOST / "eternia-backup.yaml").read_text()),
            ("docker/eternia-backup.yaml", (DEPLOY / "docker" / "eternia-backup.yaml").read_text()),
            ("kubernetes/cronjob.yaml", _configmap_config("cronjob.yaml")),
            ("kubernetes/sidecar.yaml", _configmap_config("sidecar.yaml"))]


def _parse_cli(argv: list[str]):
    """The CLI's own parser on an invocation; the program must be the console script."""
    assert argv[0] == "eternia-backup" or argv[0].endswith("/eternia-backup"), argv
    assert "eternia-backup" in PYPROJECT["project"]["scripts"]
    return build_parser().parse_args(argv[1:])


def _invocations(shell_line: str) -> list[list[str]]:
    """The eternia-backup commands of a shell line (split at ; && ||)."""
    found = []
    for part in re.split(r";|&&|\|\|", shell_line):
        words = shlex.split(part)
        if words and words[0].endswith("eternia-backup"):
            found.append(words)
    return found


# -- configs -------------------------------------------------------------------------


@pytest.mark.parametrize("name,text", _recipe_configs(), ids=[n for n, _ in _recipe_configs()])
def test_each_recipe_config_passes_config_check(name, text, tmp_path):
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used <= set(RECIPE_ENV) | {"ETERNIA_ENV"}, f"{name}: give the test a value for {used - set(RECIPE_ENV)}"
    config = tmp_path / "eternia-backup.yaml"
    config.write_text(text)
    # --file-only: the recipes name the paths of the machines they are for (/srv/app ...), not this one's
    result = run_cli("config", "check", "--json", "--file-only", config=config, env=RECIPE_ENV)
    assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    # the state directory is explicit: temporary files go to <state_dir>/tmp, on a volume the recipe provides
    assert yaml.safe_load(text)["backup"]["state_dir"] == "/var/lib/eternia-backup"


# -- systemd ---------------------------------------------------------------------------


def _units_with_real_binary(tmp_path: Path) -> list[Path]:
    """The units with ExecStart's installed path pointed at this checkout's console script
    (systemd-analyze verify checks that the program exists)."""
    script = Path(sys.executable).parent / "eternia-backup"
    assert script.exists(), "the console script of this checkout (make setup) is missing"
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED, str(script)))
        copies.append(copy)
    return copies


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_units_verify(tmp_path):
    copies = _units_with_real_binary(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, copies)], capture_output=True,
                            text=True, timeout=60)
    # verify exits 0 on an unknown key or section, but says so: any line about our files is a finding
    findings = [line for line in (result.stdout + result.stderr).splitlines() if str(tmp_path) in line
                or any(u.name in line for u in UNITS)]
    assert result.returncode == 0 and not findings, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("unit", ["eternia-backup.service", "eternia-backup-create.service"])
def test_systemd_services_are_hardened(unit, tmp_path):
    text = (HOST / unit).read_text()
    for option in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes",
                   "StateDirectory=eternia-backup", "ReadWritePaths=/var/lib/myapp /var/backups/myapp"):
        assert f"\n{option}\n" in text, f"{unit}: {option} missing"
    # every path the config writes is writable under ProtectSystem=strict
    config = yaml.safe_load((HOST / "eternia-backup.yaml").read_text())["backup"]
    assert config["state_dir"] == "/var/lib/eternia-backup"  # StateDirectory=
    assert config["storage_path"] in text and config["metrics"]["textfile"].startswith(config["state_dir"])
    _units_with_real_binary(tmp_path)
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             str(tmp_path / unit)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and "offline" in result.stderr:
        pytest.skip(f"this systemd-analyze cannot rate units offline: {result.stderr.strip()}")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert m, result.stdout + result.stderr
    assert float(m[1]) <= 2.0, f"{unit}: exposure {m[1]} (systemd rates <= 2 as OK)"


def test_systemd_commands_are_real_cli_invocations():
    for unit in UNITS[:2]:
        execs = re.findall(r"^ExecStart=(.+)$", unit.read_text(), re.M)
        assert execs, unit
        for line in execs:
            argv = shlex.split(line)
            assert argv[0] == INSTALLED
            args = _parse_cli(argv)
            assert args.command in ("run", "create", "cleanup")
    daemon = shlex.split(re.search(r"^ExecStart=(.+)$", UNITS[0].read_text(), re.M)[1])
    grace = _parse_cli(daemon).grace
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", UNITS[0].read_text(), re.M)[1])
    assert stop > grace, "systemd must wait longer than the scheduler's grace before SIGKILL"
    timer = UNITS[2].read_text()
    assert re.search(r"^OnCalendar=", timer, re.M) and "Persistent=true" in timer


# -- cron ------------------------------------------------------------------------------


def _cron_line() -> str:
    lines = [line for line in (HOST / "crontab").read_text().splitlines()
             if line.strip() and not line.startswith("#") and not re.match(r"^[A-Z_]+=", line)]
    [line] = lines
    return line


def test_cron_line_schedule_parses_and_runs_real_commands():
    fields = _cron_line().split(None, 5)
    schedule, command = " ".join(fields[:5]), fields[5]
    it = CronSim(schedule, datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert next(it) == datetime(2026, 1, 1, 2, 30, tzinfo=timezone.utc)
    commands = [_parse_cli(argv).command for argv in _invocations(command)]
    assert commands == ["create", "cleanup"]
    env = dict(re.findall(r"^([A-Z_]+)=(.*)$", (HOST / "crontab").read_text(), re.M))
    assert env["ETERNIA_BACKUP_CONFIG"] == "/etc/eternia-backup/eternia-backup.yaml"
    assert _cron_line() in (DEPLOY / "README.md").read_text(), "the README shows the crontab's line"


# -- Kubernetes --------------------------------------------------------------------------


def _containers(doc: dict) -> list[dict]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]["containers"]


def _pod(doc: dict) -> dict:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return spec["template"]["spec"]


@pytest.mark.parametrize("name,kind", [("cronjob.yaml", "CronJob"), ("sidecar.yaml", "Deployment")])
def test_kubernetes_manifests(name, kind):
    docs = _k8s(name)
    assert [d["kind"] for d in docs] == ["ConfigMap", kind]
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
    workload = docs[1]
    pod = _pod(workload)
    [backup] = [c for c in _containers(workload) if c["name"] == "eternia-backup"]
    env = {e["name"]: e["value"] for e in backup["env"]}
    assert env["ETERNIA_BACKUP_CONFIG"] == "/etc/eternia-backup/eternia-backup.yaml"
    assert backup["envFrom"] == [{"secretRef": {"name": "eternia-backup-s3"}}]  # credentials from a Secret
    assert backup["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in backup["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/eternia-backup"]]["configMap"]["name"] == docs[0]["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/var/lib/eternia-backup"]]  # the state dir: writable
    if kind == "CronJob":
        assert CronSim(workload["spec"]["schedule"], datetime(2026, 1, 1, tzinfo=timezone.utc))
        assert workload["spec"]["concurrencyPolicy"] == "Forbid"
        assert backup["command"] == ["/bin/sh", "-c"]
        commands = [_parse_cli(argv).command for argv in _invocations(backup["args"][0])]
        assert commands == ["create", "cleanup"]
    else:
        args = _parse_cli(["eternia-backup", *backup["args"]])
        assert args.command == "run"
        assert pod["terminationGracePeriodSeconds"] > args.grace
        # the app and the sidecar share the data volume
        app = next(c for c in _containers(workload) if c["name"] != "eternia-backup")
        assert {m["name"] for m in app["volumeMounts"]} & {m["name"] for m in backup["volumeMounts"]}


# -- Docker --------------------------------------------------------------------------------


def _dockerfile() -> dict[str, list[str]]:
    text = (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.setdefault(word.upper(), []).append(rest.strip())
    return found


def test_dockerfile_commands_are_the_documented_ones():
    import json

    df = _dockerfile()
    [install] = [r for r in df["RUN"] if "pip install" in r]
    pip_line = install.split("&&")[0].strip()
    readme = (DEPLOY / "README.md").read_text()
    assert f"RUN {pip_line}" in readme, "the README shows the Dockerfile's pip line"
    # the extras it installs exist, and are the ones the README's venv install names
    spec = shlex.split(pip_line)[-1]
    extras = re.search(r"\[([^\]]+)\]", spec)[1]
    assert set(extras.split(",")) <= set(PYPROJECT["project"]["optional-dependencies"])
    assert f"pip install 'eternia-backup[{extras}]'" in readme
    assert df["COPY"] == [". /src"] and spec.startswith("/src[")
    # the entrypoint is the console script, the default command a real invocation
    entrypoint, cmd = json.loads(df["ENTRYPOINT"][0]), json.loads(df["CMD"][0])
    assert entrypoint == ["eternia-backup"]
    assert _parse_cli(entrypoint + cmd).command == "run"
    assert "eternia-backup run" in (ROOT / "README.md").read_text()  # the documented verb
    assert df["USER"] == ["10001"]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(df["ENV"])))
    assert env["ETERNIA_BACKUP_CONFIG"] == "/etc/eternia-backup/eternia-backup.yaml"


def test_compose_file():
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    backup, app = services["backup"], services["app"]
    assert backup["build"]["dockerfile"] == "examples/deploy/docker/Dockerfile"
    assert (DEPLOY / "docker" / backup["build"]["context"] / backup["build"]["dockerfile"]).resolve() == \
        (DEPLOY / "docker" / "Dockerfile").resolve()
    assert _parse_cli(["eternia-backup", *backup["command"]]).command == "run"
    # app and backup share the app's volume; the config is the recipe's file
    data = {v.split(":")[0] for v in app["volumes"]} & {v.split(":")[0] for v in backup["volumes"]}
    assert data == {"app-data"}
    assert "./eternia-backup.yaml:/etc/eternia-backup/eternia-backup.yaml:ro" in backup["volumes"]
    assert "backup-state:/var/lib/eternia-backup" in backup["volumes"]
    # credentials come from the environment (.env), not the file
    assert backup["environment"]["AWS_SECRET_ACCESS_KEY"].startswith("${AWS_SECRET_ACCESS_KEY")
    grace = _parse_cli(["eternia-backup", *backup["command"]]).grace
    assert int(backup["stop_grace_period"].rstrip("s")) > grace
    assert backup["environment"]["S3_ENDPOINT_URL"].startswith("http://seaweedfs:")


def test_the_main_readme_links_the_recipes():
    assert "(examples/deploy/README.md)" in (ROOT / "README.md").read_text()
    for path in re.findall(r"\]\(([^)#]+)\)", (DEPLOY / "README.md").read_text()):
        if "://" not in path:
            assert (DEPLOY / path).exists(), path
