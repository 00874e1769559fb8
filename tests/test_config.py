"""The config loader: the original description's YAML verbatim, the general form, and every bad input's message.

``load_config``/``parse_config`` check the YAML; ``BackupManager(config)`` adds what
plugins check (source options, compression, level). Every error is a ConfigError
whose message names the key path, the value found and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eternia_backup import BackupManager
from eternia_backup.config import BackupConfig, load_config, parse_config
from eternia_backup.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# The original description's configuration block, verbatim (comments, trailing blank line with spaces and all).
SEED_YAML = """\
backup:
  enabled: true                # Enable or disable automated backups
  frequency: daily             # Backup frequency: hourly, daily, weekly, monthly
  retention_days: 7            # Number of days to keep backups (0 = keep forever)
  storage_path: backups        # Local directory to store backups
  
  cloud_backup:
    enabled: true              # Enable or disable cloud backups
    provider: aws              # Cloud provider (currently only 'aws' is supported)
    bucket: eternia-backups    # S3 bucket name
    region: us-west-2          # AWS region
"""


def base(**overrides) -> dict:
    data = {
        "storage_path": "backups",
        "sources": [
            {"type": "directory", "name": "files", "path": "state/files"},
            {"type": "sqlite", "name": "db", "path": "state/app.db"},
        ],
    }
    data.update(overrides)
    return data


def effective(section: dict, tmp_path: Path, environ: dict | None = None) -> BackupConfig:
    config = parse_config(section, base_dir=tmp_path, environ=environ or {})
    BackupManager(config)  # the plugins' checks too
    return config


def error_for(section, tmp_path: Path, environ: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        effective(section, tmp_path, environ)
    return str(info.value)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- the original YAML as it is ------------------------------------------------------


def test_seed_yaml_verbatim(tmp_path):
    path = write(tmp_path / "app" / "config.yaml", SEED_YAML)
    config = load_config(path)
    assert config.enabled is True
    assert config.frequency == "daily"
    assert config.retention.days == 7
    assert config.path == path
    assert [(t.name, t.url) for t in config.targets] == [
        ("local", str(tmp_path / "app" / "backups")),
        ("cloud", "s3://eternia-backups/default"),
    ]
    cloud = config.targets[1]
    assert cloud.options["client_kwargs"]["region_name"] == "us-west-2"
    # no sources: given: the data/ directory beside the config file
    assert [(s.type, s.name) for s in config.sources] == [("directory", "data")]
    manager = BackupManager(config)
    assert manager.sources["data"].root == tmp_path / "app" / "data"
    assert [t.name for t in manager.targets] == ["local", "cloud"]


def test_seed_yaml_inside_an_application_config_file(tmp_path, monkeypatch):
    """The section lives in the application's own config file beside its other settings."""
    monkeypatch.setenv("ETERNIA_ENV", "production")
    text = "app:\n  title: Eternia\n  debug: false\n" + SEED_YAML + "logging:\n  level: INFO\n"
    config = load_config(write(tmp_path / "eternia.yaml", text))
    assert config.environment == "production"
    assert config.targets[1].url == "s3://eternia-backups/production"


def test_seed_yaml_with_cloud_disabled_has_only_the_local_target(tmp_path):
    text = SEED_YAML.replace("enabled: true              # Enable or disable cloud", "enabled: false  #")
    config = load_config(write(tmp_path / "c.yaml", text))
    assert [t.name for t in config.targets] == ["local"]


@pytest.mark.parametrize("frequency", ["hourly", "daily", "weekly", "monthly"])
def test_seed_frequencies(tmp_path, frequency):
    assert effective(base(frequency=frequency), tmp_path).frequency == frequency


def test_retention_days_0_keeps_forever(tmp_path):
    config = effective(base(retention_days=0), tmp_path)
    assert config.retention.days == 0 and config.retention.keeps_everything


def test_general_form(tmp_path):
    config = effective(base(
        name="shop", environment="staging", timezone="Europe/Berlin",
        targets=[{"name": "nas", "url": "/mnt/nas/backups", "options": {"auto_mkdir": True}},
                 {"url": "memory://eternia/x"}],
        archive={"format": "tar", "compression": "gzip", "level": 9},
        retention={"keep_last": 3, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 2,
                   "keep_hourly": 24},
        sources=[{"type": "directory", "name": "files", "path": "state", "exclude": ["*.tmp"], "include": ["*"]},
                 {"type": "sqlite", "name": "db", "path": "app.db"},
                 {"type": "command", "name": "pg", "command": "echo hi", "restore_command": "cat"}],
    ), tmp_path)
    assert (config.name, config.environment, config.timezone) == ("shop", "staging", "Europe/Berlin")
    assert [(t.name, t.url) for t in config.targets] == [
        ("local", str(tmp_path / "backups")), ("nas", "/mnt/nas/backups"), ("target2", "memory://eternia/x")]
    assert config.targets[1].options == {"auto_mkdir": True}
    assert (config.archive_format, config.compression, config.compression_level) == ("tar", "gzip", 9)
    r = config.retention
    assert (r.keep_last, r.keep_hourly, r.keep_daily, r.keep_weekly, r.keep_monthly, r.keep_yearly) == \
        (3, 24, 7, 4, 12, 2)
    assert [s.name for s in config.sources] == ["files", "db", "pg"]


def test_defaults(tmp_path):
    config = effective({}, tmp_path)
    assert config.name == "eternia-backup" and config.environment == "default"
    assert (config.archive_format, config.compression) == ("tar", "zstd")
    assert [(t.name, t.url) for t in config.targets] == [("local", str(tmp_path / "backups"))]
    assert config.retention.days == 0


# -- ${VAR} and ${VAR:-default} ----------------------------------------------------------


def test_env_vars_are_expanded(tmp_path):
    env = {"BK_DIR": "/srv/bk", "DAYS": "30", "CLOUD": "true", "BUCKET": "my-bucket"}
    section = base(
        storage_path="${BK_DIR}",
        retention_days="${DAYS:-7}",
        cloud_backup={"enabled": "${CLOUD:-false}", "bucket": "${BUCKET}", "region": "${REGION:-eu-west-1}"},
        sources=[{"type": "directory", "name": "files", "path": "${STATE:-state}/files"}],
    )
    config = effective(section, tmp_path, env)
    assert config.targets[0].url == "/srv/bk"
    assert config.retention.days == 30
    assert config.targets[1].url == "s3://my-bucket/default"
    assert config.targets[1].options["client_kwargs"]["region_name"] == "eu-west-1"
    assert config.sources[0].options["path"] == "state/files"

    # the defaults when unset
    config = effective(base(retention_days="${DAYS:-7}", cloud_backup={"enabled": "${CLOUD:-false}"}),
                       tmp_path, {})
    assert config.retention.days == 7
    assert [t.name for t in config.targets] == ["local"]


def test_env_vars_from_a_file_and_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ETERNIA_TEST_STORE", str(tmp_path / "store"))
    path = write(tmp_path / "c.yaml", "backup:\n  storage_path: ${ETERNIA_TEST_STORE}/main\n")
    assert load_config(path).targets[0].url == str(tmp_path / "store" / "main")


def test_missing_env_var_names_the_key_and_the_variable(tmp_path):
    message = error_for(base(storage_path="${BK_DIR}"), tmp_path)
    assert "backup.storage_path" in message and "BK_DIR" in message and "not set" in message
    message = error_for(base(sources=[{"type": "directory", "name": "f", "path": "${NOPE}/x"}]), tmp_path)
    assert "backup.sources[0].path" in message and "NOPE" in message


def test_env_var_default_also_applies_when_the_variable_is_empty(tmp_path):
    config = effective(base(storage_path="${BK_DIR:-backups}"), tmp_path, {"BK_DIR": ""})
    assert config.targets[0].url == str(tmp_path / "backups")


# -- every bad input: key path, value, what was expected --------------------------------

S = [{"type": "directory", "name": "files", "path": "state/files"}]

BAD = [
    pytest.param({"retention_days": "seven"}, ["backup.retention_days", "'seven'", "whole number"],
                 id="retention_days-word"),
    pytest.param({"retention_days": -1}, ["backup.retention_days", "-1", "whole number >= 0"],
                 id="retention_days-negative"),
    pytest.param({"retention_days": 7.5}, ["backup.retention_days", "7.5", "whole number"],
                 id="retention_days-fraction"),
    pytest.param({"retention": {"keep_daily": -2}}, ["backup.retention.keep_daily", "-2", "whole number >= 0"],
                 id="keep_daily-negative"),
    pytest.param({"retention": {"keep_last": "three"}}, ["backup.retention.keep_last", "'three'", "whole number"],
                 id="keep_last-word"),
    pytest.param({"retention": {"days": -7}}, ["backup.retention.days", "-7"], id="retention.days-negative"),
    pytest.param({"retention_days": 3, "retention": {"days": 5}},
                 ["backup.retention_days", "backup.retention.days", "3", "5"], id="retention-days-disagree"),
    pytest.param({"retension_days": 7}, ["backup.retension_days", "unknown key", "did you mean 'retention_days'"],
                 id="unknown-key-typo"),
    pytest.param({"bogus": 1}, ["backup.bogus", "unknown key", "retention_days", "sources"],
                 id="unknown-key-lists-known"),
    pytest.param({"cloud_backup": {"enabled": True, "bucket": "bucket", "regoin": "us-west-2"}},
                 ["backup.cloud_backup.regoin", "did you mean 'region'"], id="unknown-nested-key"),
    pytest.param({"retention": {"keep_dialy": 7}}, ["backup.retention.keep_dialy", "did you mean 'keep_daily'"],
                 id="unknown-retention-key"),
    pytest.param({"sources": [{"type": "dirctory", "name": "f", "path": "x"}]},
                 ["backup.sources[0].type", "'dirctory'", "directory", "sqlite", "command"],
                 id="unknown-source-type"),
    pytest.param({"sources": [{"name": "f", "path": "x"}]}, ["backup.sources[0].type", "missing"],
                 id="source-without-type"),
    pytest.param({"sources": [{"type": "directory", "name": "f", "path": "x", "exlude": ["*.tmp"]}]},
                 ["backup.sources[0].exlude", "unknown key", "did you mean 'exclude'"], id="unknown-source-option"),
    pytest.param({"sources": [{"type": "sqlite", "name": "db", "path": "x", "timout": 3}]},
                 ["backup.sources[0].timout", "did you mean 'timeout'"], id="unknown-sqlite-option"),
    pytest.param({"sources": [{"type": "directory", "name": "f"}]},
                 ["backup.sources[0].path", "required", "directory"], id="directory-without-path"),
    pytest.param({"sources": [{"type": "sqlite", "name": "db"}]},
                 ["backup.sources[0].path", "required", "sqlite"], id="sqlite-without-path"),
    pytest.param({"sources": [{"type": "command", "name": "pg"}]},
                 ["backup.sources[0].command", "required"], id="command-without-command"),
    pytest.param({"sources": [{"type": "directory", "name": "f", "path": "x", "exclude": "*.tmp"}]},
                 ["backup.sources[0].exclude", "'*.tmp'", "list"], id="exclude-not-a-list"),
    pytest.param({"sources": S + [{"type": "sqlite", "name": "files", "path": "db"}]},
                 ["backup.sources[1].name", "'files'", "unique"], id="duplicate-source-names"),
    pytest.param({"sources": [{"type": "directory", "name": "my files", "path": "x"}]},
                 ["backup.sources[0].name", "'my files'", "letters, digits"], id="bad-source-name"),
    pytest.param({"sources": "state/files"}, ["backup.sources", "'state/files'", "list"], id="sources-not-a-list"),
    pytest.param({"sources": []}, ["backup.sources", "at least one"], id="no-sources"),
    pytest.param({"cloud_backup": {"enabled": True, "provider": "gcp", "bucket": "bucket"}},
                 ["backup.cloud_backup.provider", "'gcp'", "aws", "targets"], id="provider-not-aws"),
    pytest.param({"cloud_backup": {"enabled": True, "provider": "aws"}},
                 ["backup.cloud_backup.bucket", "required"], id="cloud-without-bucket"),
    pytest.param({"archive": {"compression": "bzip2"}},
                 ["backup.archive.compression", "'bzip2'", "zstd", "gzip", "xz", "none"],
                 id="wrong-compression"),
    pytest.param({"archive": {"format": "zip"}}, ["backup.archive.format", "'zip'", "tar"], id="wrong-format"),
    pytest.param({"archive": {"compression": "zstd", "level": 99}},
                 ["backup.archive.level", "99", "-7", "22"], id="zstd-level-out-of-range"),
    pytest.param({"archive": {"compression": "gzip", "level": 10}},
                 ["backup.archive.level", "10", "0 to 9"], id="gzip-level-out-of-range"),
    pytest.param({"archive": {"compression": "none", "level": 3}},
                 ["backup.archive.level", "none", "3"], id="level-without-compression"),
    pytest.param({"archive": {"level": "high"}}, ["backup.archive.level", "'high'", "whole number"],
                 id="level-not-a-number"),
    pytest.param({"timezone": "Mars/Olympus_Mons"}, ["backup.timezone", "'Mars/Olympus_Mons'", "IANA"],
                 id="invalid-timezone"),
    pytest.param({"frequency": "sometimes"}, ["backup.frequency", "'sometimes'", "hourly", "monthly"],
                 id="invalid-frequency"),
    pytest.param({"enabled": "maybe"}, ["backup.enabled", "'maybe'", "true or false"], id="enabled-not-bool"),
    pytest.param({"environment": "prod env"}, ["backup.environment", "'prod env'"], id="bad-environment"),
    pytest.param({"storage_path": ""}, ["backup.storage_path", "''"], id="empty-storage-path"),
    pytest.param({"targets": [{"name": "nas"}]}, ["backup.targets[0].url", "missing"], id="target-without-url"),
    pytest.param({"targets": [{"url": "/x", "optons": {}}]}, ["backup.targets[0].optons", "did you mean 'options'"],
                 id="target-option-typo"),
    pytest.param({"targets": [{"name": "local", "url": "/x"}]}, ["backup.targets", "'local'", "unique"],
                 id="duplicate-target-names"),
    pytest.param({"targets": {"url": "/x"}}, ["backup.targets", "list"], id="targets-not-a-list"),
    pytest.param({"retention_days": True}, ["backup.retention_days", "True", "whole number"],
                 id="retention_days-boolean"),
]


@pytest.mark.parametrize("overrides, expected", BAD)
def test_bad_input_names_key_value_and_expectation(tmp_path, overrides, expected):
    message = error_for(base(**overrides), tmp_path)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert "\n" not in message  # one line


def test_bad_values_from_a_file(tmp_path):
    path = write(tmp_path / "c.yaml", "backup:\n  retention_days: seven\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "backup.retention_days: expected a whole number >= 0, got 'seven'"


def test_several_problems_are_reported_together(tmp_path):
    message = error_for(base(retention_days="seven", frequency="sometimes"), tmp_path)
    assert "backup.retention_days" in message and "backup.frequency" in message


# -- files that are not a config ---------------------------------------------------------


def test_not_yaml(tmp_path):
    path = write(tmp_path / "c.yaml", "backup:\n  storage_path: [unclosed\n  retention_days: 7\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "YAML" in message and "line" in message


DUPLICATES = [
    pytest.param("backup:\n  retention_days: 7\n  storage_path: b\n  retention_days: 30\n",
                 "backup.retention_days: given twice, at lines 2 and 4", id="repeated-key"),
    pytest.param("backup:\n  enabled: true\n  storage_path: b\napp: {x: 1}\nbackup:\n  enabled: false\n",
                 "backup: given twice, at lines 1 and 5", id="second-backup-section"),
    pytest.param("backup:\n  sources:\n    - type: directory\n      name: a\n      path: data\n      name: b\n",
                 "backup.sources[0].name: given twice, at lines 4 and 6", id="in-a-list"),
    pytest.param("backup:\n  cloud_backup: {bucket: one-bucket, bucket: two-bucket}\n",
                 "backup.cloud_backup.bucket: given twice, at line 2", id="flow-mapping"),
]


@pytest.mark.parametrize("text, expected", DUPLICATES)
def test_a_key_given_twice_is_an_error_naming_it_and_both_lines(tmp_path, text, expected):
    path = write(tmp_path / "c.yaml", text)
    for load in (load_config, BackupManager.from_config):
        with pytest.raises(ConfigError) as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"{path}: {expected}"), message
        assert "remove one" in message and "\n" not in message
        assert "two-bucket" not in message  # keys and lines, never values


def test_keys_given_twice_outside_the_backup_section_or_by_a_merge_are_the_applications(tmp_path):
    text = ("app: {title: a, title: b}\n"
            "defaults: &defaults {retention_days: 3, storage_path: b}\n"
            "backup:\n  <<: *defaults\n  retention_days: 5\n")
    config = load_config(write(tmp_path / "c.yaml", text))
    assert config.retention.days == 5 and config.targets[0].url == str(tmp_path / "b")


def test_not_text(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"backup:\n  name: \xff\xfe\x00\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["app:\n  title: x\n", "", "- backup\n- other\n", "just a string\n"])
def test_no_backup_section(tmp_path, text):
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "'backup:' section" in str(info.value)


def test_backup_section_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path / "c.yaml", "backup:\n  - a\n  - b\n"))
    assert "backup" in str(info.value) and "mapping" in str(info.value)


def test_empty_backup_section_means_defaults(tmp_path):
    config = load_config(write(tmp_path / "c.yaml", "backup:\n"))
    assert config.targets[0].url == str(tmp_path / "backups")


def test_config_file_not_found(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "--config" in str(info.value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "eternia-backup.yaml" in str(info.value) and "ETERNIA_BACKUP_CONFIG" in str(info.value)


def test_config_found_from_env_then_cwd(tmp_path, monkeypatch):
    a = write(tmp_path / "a" / "eternia-backup.yaml", "backup:\n  name: from-cwd\n")
    b = write(tmp_path / "b" / "conf.yaml", "backup:\n  name: from-env\n")
    monkeypatch.chdir(a.parent)
    assert load_config().name == "from-cwd"
    monkeypatch.setenv("ETERNIA_BACKUP_CONFIG", str(b))
    assert load_config().name == "from-env"
    assert load_config(a).name == "from-cwd"  # an explicit path wins


# -- environment ---------------------------------------------------------------------------


def test_environment_from_section_else_env_var_else_default(tmp_path, monkeypatch):
    cloud = {"enabled": True, "bucket": "eternia-backups"}
    path = write(tmp_path / "c.yaml", yaml.safe_dump({"backup": {"cloud_backup": cloud}}))
    config = load_config(path)
    assert config.environment == "default"
    assert config.targets[-1].url == "s3://eternia-backups/default"

    monkeypatch.setenv("ETERNIA_ENV", "staging")
    config = load_config(path)
    assert config.environment == "staging"
    assert config.targets[-1].url == "s3://eternia-backups/staging"

    write(path, yaml.safe_dump({"backup": {"cloud_backup": cloud, "environment": "production"}}))
    config = load_config(path)
    assert config.environment == "production"
    assert config.targets[-1].url == "s3://eternia-backups/production"


def test_bad_environment_variable_is_named(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config({}, base_dir=tmp_path, environ={"ETERNIA_ENV": "prod env"})
    assert "ETERNIA_ENV" in str(info.value) and "'prod env'" in str(info.value)


# -- paths ---------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    conf_dir = tmp_path / "srv" / "app"
    write(conf_dir / "eternia-backup.yaml", yaml.safe_dump({"backup": base(
        targets=[{"name": "nas", "url": "../nas"}, {"name": "abs", "url": str(tmp_path / "abs")}],
    )}))
    monkeypatch.chdir(tmp_path)  # somewhere else
    config = load_config(Path("srv/app/eternia-backup.yaml"))  # a relative --config too
    assert config.base_dir == conf_dir
    assert [t.url for t in config.targets] == [
        str(conf_dir / "backups"), str(conf_dir / ".." / "nas"), str(tmp_path / "abs")]
    manager = BackupManager(config)
    assert manager.sources["files"].root == conf_dir / "state" / "files"
    assert manager.sources["db"].path == conf_dir / "state" / "app.db"


def test_relative_paths_end_to_end_from_another_directory(cli, app, write_config, tmp_path):
    cfg = write_config()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cli("--config", str(cfg.relative_to(tmp_path)), "create", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    archive = Path(proc.stdout.strip())
    assert archive.parent == app / "backups" and archive.is_file()
    proc = cli("create", env={"ETERNIA_BACKUP_CONFIG": str(cfg)}, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert list(elsewhere.iterdir()) == []


# -- validation before I/O; a source that is not there -------------------------------------


def test_validation_does_no_io(tmp_path):
    section = base(storage_path="does/not/exist/yet", sources=[
        {"type": "directory", "name": "files", "path": "missing/dir"},
        {"type": "sqlite", "name": "db", "path": "missing/app.db"},
    ])
    BackupManager(parse_config(section, base_dir=tmp_path, environ={}))
    assert list(tmp_path.iterdir()) == []


def test_bad_config_writes_nothing(cli, app, write_config):
    cfg = write_config(retention_days="seven")
    proc = cli("create", config=cfg)
    assert proc.returncode == 2 and proc.stderr.startswith("error: backup.retention_days")
    assert not (app / "backups").exists()


@pytest.mark.parametrize("kind, missing", [("directory", "state/nothing-here"), ("sqlite", "state/gone.db")])
def test_create_with_a_missing_source_fails_and_writes_nothing(cli, app, write_config, kind, missing):
    good = write_config()
    proc = cli("create", config=good)
    assert proc.returncode == 0, proc.stderr
    before = sorted(p.name for p in (app / "backups").iterdir())

    cfg = write_config(sources=[{"type": "directory", "name": "files", "path": "state/files"},
                                {"type": kind, "name": "broken", "path": missing}])
    checked = cli("config", "check", config=cfg)  # valid (not exit 2), but it cannot work on this machine
    assert checked.returncode == 1 and "problem: source 'broken'" in checked.stdout, checked.stdout
    assert cli("config", "check", "--file-only", config=cfg).returncode == 0
    proc = cli("create", config=cfg)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(app / missing) in lines[0] and "'broken'" in lines[0]
    assert sorted(p.name for p in (app / "backups").iterdir()) == before


def test_without_sources_the_missing_default_data_dir_is_explained(tmp_path, cli):
    config = tmp_path / "eternia-backup.yaml"
    config.write_text("backup:\n  storage_path: backups\n")
    proc = cli("create", config=config)
    assert proc.returncode == 1
    assert "data" in proc.stderr and "backup.sources is not set" in proc.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "state.json").write_text("{}")
    assert cli("create", config=config).returncode == 0
    # a hook's failure is not the default directory's: no hint about backup.sources
    config.write_text("backup:\n  storage_path: backups\n  hooks: {before_backup: 'echo no way >&2; exit 5'}\n")
    proc = cli("create", config=config)
    assert proc.returncode == 1 and "no way" in proc.stderr and "backup.sources" not in proc.stderr, proc.stderr
