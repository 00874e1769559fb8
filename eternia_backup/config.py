"""Configuration: the application's YAML ``backup:`` section -> validated, frozen objects.

The keys of the project's original description (``enabled``, ``frequency``,
``retention_days``, ``storage_path``, ``cloud_backup``, as in
examples/app/eternia-backup.yaml) are accepted as they are and mapped onto the general form
(``sources``, ``targets``, ``archive``, ``retention``). Validation happens before
any I/O; every error names the key path, the value found and what was expected.

Decisions:

* With no ``sources:``, the state backed up is the directory ``data/`` beside the
  config file (a source named ``data``), so that original YAML works unchanged.
* ``storage_path`` becomes a local target named ``local``; ``cloud_backup``
  becomes a target named ``cloud`` at ``s3://<bucket>/[<prefix>/]<environment>``.
* Relative paths are relative to the directory of the config file.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from . import process, redact
from .encryption import EncryptionSettings
from .hooks import DEFAULT_TIMEOUT as DEFAULT_HOOK_TIMEOUT
from .hooks import Hooks
from .increments import Incremental
from .errors import ConfigError

CONFIG_ENV = "ETERNIA_BACKUP_CONFIG"
DEFAULT_CONFIG_NAME = "eternia-backup.yaml"
FREQUENCIES = ("hourly", "daily", "weekly", "monthly")
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


def _f(expected: str, default: Any = ..., **kw) -> Any:
    """A pydantic Field that carries the words used when its value is wrong."""
    return Field(default, json_schema_extra={"expected": expected}, **kw)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_bool(value: Any) -> Any:
    # YAML's yes/true would otherwise count as 1 (day, backup ...).
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


Whole = Annotated[int, BeforeValidator(_no_bool)]
Count = Whole | None


class CloudBackupModel(_Model):
    """Copies of every backup in S3: a target named ``cloud``."""

    enabled: bool = _f("true or false", False, description="Also store every backup in S3.",
                       examples=[True])
    provider: str = _f("a cloud provider name", "aws", description="The cloud provider: aws (S3 and "
                       "S3-compatible stores) is built in; a plugin may serve others.", examples=["aws"])
    bucket: str | None = _f("an S3 bucket name (3-63 characters)", None, min_length=3, max_length=63,
                            description="The bucket; required when enabled.", examples=["eternia-backups"])
    region: str | None = _f("an AWS region name such as us-west-2", None,
                            description="The bucket's region; default: the AWS configuration's.",
                            examples=["us-west-2"])
    endpoint_url: str | None = _f("an http(s) URL of an S3-compatible endpoint", None,
                                  description="The endpoint of an S3-compatible store (MinIO, SeaweedFS ...).",
                                  examples=["http://127.0.0.1:8333"])
    prefix: str | None = _f("a key prefix such as team/app", None,
                            description="Key prefix; backups go to s3://<bucket>/[<prefix>/]<environment>/.",
                            examples=["team/app"])
    storage_class: str | None = _f("an S3 storage class such as STANDARD_IA", None,
                                   description="The S3 storage class of uploaded objects.",
                                   examples=["STANDARD_IA"])
    server_side_encryption: Literal["AES256", "aws:kms"] | None = _f(
        "AES256 or aws:kms", None, description="S3 server-side encryption of uploaded objects.",
        examples=["aws:kms"])
    kms_key_id: str | None = _f("a KMS key id or ARN", None,
                                description="The KMS key; required with server_side_encryption: aws:kms.",
                                examples=["arn:aws:kms:us-west-2:111122223333:key/1234abcd"])
    create_bucket: bool = _f("true or false", False, description="Create the bucket when it does not exist "
                             "(otherwise a missing bucket is an error).", examples=[True])
    connect_timeout: float | None = _f("a number of seconds > 0", None, gt=0,
                                       description="Seconds to wait for a connection to the endpoint (default 5).",
                                       examples=[5])
    read_timeout: float | None = _f("a number of seconds > 0", None, gt=0,
                                    description="Seconds to wait for an answer (default 20).", examples=[20])
    max_attempts: Whole | None = _f("a whole number >= 1", None, ge=1,
                                    description="Attempts per request before giving up (default 3).", examples=[3])


class SourceModel(BaseModel):
    """A source entry; the options beyond type/name are checked by its plugin."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str = _f("a source type such as directory, sqlite or command",
                   description="What kind of state this is; the other keys depend on it (see below).",
                   examples=["directory"])
    name: str = _f("a name made of letters, digits, '.', '_' or '-'", pattern=_NAME_RE,
                   description="Unique among the sources; the directory that holds it in the archive and the "
                   "name for `restore --source`.", examples=["files"])


class TargetModel(_Model):
    name: str | None = _f("a name made of letters, digits, '.', '_' or '-'", None, pattern=_NAME_RE,
                          description="Unique among the targets; default: target1, target2 ...", examples=["nas"])
    url: str = _f("a path or URL such as /var/backups or s3://bucket/prefix", min_length=1,
                  description="Where backups are stored: a local directory (relative to the config file) or any "
                  "URL fsspec can open.", examples=["/mnt/nas/backups"])
    options: dict[str, Any] = _f("a mapping of storage options", default_factory=dict,
                                 description="Passed to the fsspec filesystem of the URL.",
                                 examples=[{"client_kwargs": {"region_name": "eu-central-1"}}])


def _full_every(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("must be at least 1")
        return value
    if isinstance(value, str):
        from .increments import parse_duration

        parse_duration(value)
        return value.strip()
    raise ValueError(f"{value!r} is neither a number of backups nor a duration")


class IncrementalModel(_Model):
    enabled: bool = _f("true or false", False,
                       description="Archive only what changed since the previous backup (directory sources; "
                       "dumps are archived whole each time). Every archive stays a plain tar.",
                       examples=[True])
    full_every: Annotated[int | str | None, BeforeValidator(_full_every)] = _f(
        "a number of backups >= 1, or a duration such as 7d", None,
        description="Make a full backup after this many incrementals, or once the last full one is this old "
        "(7d, 12h, 2w). Default: only the first backup, and `create --full`, are full.", examples=[24, "7d"])


class ArchiveModel(_Model):
    format: str = _f("an archive format such as tar", "tar",
                     description="How entries are packed into one stream (an archiver plugin).", examples=["tar"])
    compression: str = _f("one of zstd, gzip, xz, none", "zstd",
                          description="How the archive is compressed (a compression plugin).", examples=["zstd"])
    level: Whole | None = _f("a whole number compression level", None,
                             description="Compression level (zstd -7..22, gzip and xz 0..9); default: the "
                             "compression's own (zstd 3, gzip 6, xz 6).", examples=[3])
    incremental: IncrementalModel = _f("a mapping", default_factory=IncrementalModel,
                                       description="Incremental backups; see below.",
                                       examples=[{"enabled": True, "full_every": 24}])


class RetentionModel(_Model):
    days: Whole | None = _f("a whole number >= 0", None, ge=0,
                            description="Keep backups younger than this many days; 0 keeps every backup. The "
                            "same as backup.retention_days (set only one).", examples=[30])
    keep_last: Count = _f("a whole number >= 0", None, ge=0,
                          description="Keep the N newest intact backups.", examples=[3])
    keep_hourly: Count = _f("a whole number >= 0", None, ge=0,
                            description="Keep the newest backup of each of the N most recent hours that have one.",
                            examples=[24])
    keep_daily: Count = _f("a whole number >= 0", None, ge=0,
                           description="Keep the newest backup of each of the N most recent days that have one.",
                           examples=[7])
    keep_weekly: Count = _f("a whole number >= 0", None, ge=0,
                            description="Keep the newest backup of each of the N most recent weeks that have one.",
                            examples=[4])
    keep_monthly: Count = _f("a whole number >= 0", None, ge=0,
                             description="Keep the newest backup of each of the N most recent months that have one.",
                             examples=[12])
    keep_yearly: Count = _f("a whole number >= 0", None, ge=0,
                            description="Keep the newest backup of each of the N most recent years that have one.",
                            examples=[3])
    incomplete_grace_hours: float = _f("a number of hours >= 0", 24.0, ge=0,
                                       description="Leftovers of interrupted backups older than this are removed "
                                       "by cleanup.", examples=[48])


class ScheduleModel(_Model):
    cron: str | None = _f("a 5-field cron expression such as '30 2 * * *'", None,
                          description="When scheduled backups run, instead of backup.frequency (set only one).",
                          examples=["30 2 * * *"])
    timezone: str | None = _f("an IANA time zone name such as Europe/Berlin", None,
                              description="The same as backup.timezone (set only one).", examples=["Europe/Berlin"])
    catch_up: bool = _f("true or false", True,
                        description="When the scheduler starts after a missed slot, back up at once (false: wait "
                        "for the next slot).", examples=[False])
    retry_attempts: Whole = _f("a whole number >= 0", 3, ge=0,
                               description="Retries of a failed scheduled backup.", examples=[5])
    retry_backoff_seconds: float = _f("a number of seconds > 0", 60.0, gt=0,
                                      description="Wait before the first retry; doubled for each further retry.",
                                      examples=[30])
    lease_ttl_seconds: float = _f("a number of seconds >= 10", 300.0, ge=10,
                                  description="Lifetime of the lease that makes replicas sharing an S3 target take "
                                  "one backup per slot; renewed while a backup runs.", examples=[600])


NOTIFY_EVENTS = ("start", "success", "warning", "failure")
NOTIFY_OPERATIONS = ("backup", "cleanup", "drill")
Event = Literal["start", "success", "warning", "failure"]
Operation = Literal["backup", "cleanup", "drill"]


def _http_url(value: Any) -> Any:
    """An http(s) URL with a host: what the webhook and ping notifiers can reach."""
    from urllib.parse import urlsplit

    if isinstance(value, str):
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in value)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("not an http(s) URL with a host")
    return value


HttpUrl = Annotated[str, BeforeValidator(_http_url)]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


ONE_OR_MANY = BeforeValidator(_one_or_many)  # notify.<kind>: one mapping or a list of them


def _events(default: str, example: list[str]) -> Any:
    return _f("a list of start, success, warning, failure", None, description=f"The events to send; default: "
              f"{default}. A run that succeeded with warnings is a warning, and a success too: success covers it, "
              "warning alone hears only of those.",
              examples=[example])


def _operations(default: str, example: list[str]) -> Any:
    return _f("a list of backup, cleanup, drill", None,
              description=f"The operations it hears about; default: {default}.", examples=[example])


def _timeout() -> Any:
    return _f("a number of seconds > 0", 10.0, gt=0, description="How long one notification may take; one that "
              "takes longer is given up (a warning is logged) and the operation goes on.", examples=[5])


class WebhookModel(_Model):
    """A URL that receives a JSON POST per event; the payload is described in docs/monitoring.md."""

    url: HttpUrl = _f("an http(s) URL", description="Receives a JSON POST for each event asked for.",
                      examples=["https://hooks.example/backup"])
    events: list[Event] | None = _events("failure (with on_success: success and failure)", ["start", "failure"])
    operations: list[Operation] | None = _operations("backup and drill", ["backup", "cleanup", "drill"])
    on_success: bool | None = _f("true or false", None, description="The older way to ask for successes: true "
                                 "means events: [success, failure]. Set events or on_success, not both.",
                                 examples=[True])
    timeout_seconds: float = _timeout()


class HealthchecksModel(_Model):
    """A healthchecks.io-style ping URL: <url>/start, <url> on success, <url>/fail with the log tail."""

    url: HttpUrl = _f("an http(s) ping URL", description="The check's ping URL (it is a secret: best given as "
                      "${VARIABLE}).", examples=["https://hc-ping.com/${HC_UUID}"])
    events: list[Event] | None = _events("start, success, failure", ["success", "failure"])
    operations: list[Operation] | None = _operations("backup (give drills a check of their own)", ["drill"])
    timeout_seconds: float = _timeout()


class AppriseModel(_Model):
    """Anything apprise reaches (Slack, ntfy, email, PagerDuty ...); needs `pip install eternia-backup[apprise]`."""

    urls: list[str] = _f("a list of apprise URLs", description="Apprise URLs (they hold tokens: best "
                         "given as ${VARIABLE}s); see apprise's documentation for the services.",
                         examples=[["${SLACK_URL}", "ntfy://ntfy.sh/my-backups"]])
    events: list[Event] | None = _events("warning, failure", ["warning", "failure"])
    operations: list[Operation] | None = _operations("backup and drill", ["backup", "drill"])
    timeout_seconds: float = _timeout()


class HooksModel(_Model):
    before_backup: str | None = _f("a shell command", None, min_length=1,
                                   description="Run once before any source is read (quiesce the application for "
                                   "a snapshot of every source); a failure fails the backup.",
                                   examples=["kill -STOP $(cat /run/myapp-writer.pid)"])
    after_backup: str | None = _f("a shell command", None, min_length=1,
                                  description="Run once every source was read, also when reading failed (let "
                                  "the application write again); a failure fails the backup.",
                                  examples=["kill -CONT $(cat /run/myapp-writer.pid)"])
    on_error: str | None = _f("a shell command", None, min_length=1,
                              description="Run when a backup failed; $ETERNIA_ERROR holds the error.",
                              examples=["logger -t backup \"$ETERNIA_ERROR\""])
    env: dict[str, str] = _f("a mapping of variable names to values", default_factory=dict,
                             description="Extra environment of the hook commands (never argv; values may be "
                             "${VAR}; masked by config show).", examples=[{"PGPASSWORD": "${PGPASSWORD}"}])
    timeout: float = _f("a number of seconds > 0", DEFAULT_HOOK_TIMEOUT, gt=0,
                        description="Seconds each hook command may run; one that runs longer is stopped and "
                        "counts as failed.", examples=[60])


def _either_form(schema: dict[str, Any]) -> None:
    """The JSON Schema of notify.<kind>: one mapping or a list of them, as validated."""
    for prop in schema.get("properties", {}).values():
        items = prop.pop("items", None)
        if prop.pop("type", None) == "array" and items is not None:
            prop["anyOf"] = [items, {"type": "array", "items": items}]


class NotifyModel(_Model):
    """Notifiers; each key takes one mapping or a list of them (docs/monitoring.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_either_form)
    webhook: Annotated[list[WebhookModel], ONE_OR_MANY] = _f(
        "a mapping with url, or a list of them", default_factory=list, description="Webhooks to POST events to.",
        examples=[{"url": "https://hooks.example/backup", "events": ["failure", "warning"]}])
    healthchecks: Annotated[list[HealthchecksModel], ONE_OR_MANY] = _f(
        "a mapping with url, or a list of them", default_factory=list,
        description="healthchecks.io-style ping URLs.", examples=[{"url": "https://hc-ping.com/${HC_UUID}"}])
    apprise: Annotated[list[AppriseModel], ONE_OR_MANY] = _f(
        "a mapping with urls, or a list of them", default_factory=list,
        description="apprise notifications (the apprise extra).", examples=[{"urls": ["${SLACK_URL}"]}])


class MetricsModel(_Model):
    textfile: str | None = _f("a file path for the Prometheus textfile collector", None,
                              description="Written after every command that changes the state (backup, cleanup, "
                              "restore, verify, drill, list, status), for node_exporter's textfile collector.",
                              examples=["/var/lib/node_exporter/eternia.prom"])
    listen: str | None = _f("host:port such as 127.0.0.1:9101", None, min_length=1,
                            description="While the scheduler runs (`eternia-backup run`, start_scheduler()), serve "
                            "the same metrics over HTTP at /metrics on this address.",
                            examples=["127.0.0.1:9101"])


class LogModel(_Model):
    format: Literal["text", "json"] = _f("text or json", "text",
                                         description="How the CLI writes log lines on stderr: text, or one JSON "
                                         "object per line (see docs/monitoring.md); --log-format wins.",
                                         examples=["json"])


class EncryptionModel(_Model):
    enabled: bool = _f("true or false", False,
                       description="Encrypt new backups with age (needs the encryption extra: pyrage).",
                       examples=[True])
    recipients: list[str] = _f("a list of age public keys (age1...)", default_factory=list,
                               description="Public keys that can decrypt new backups (`eternia-backup keygen` "
                               "prints one).", examples=[["${AGE_RECIPIENT}"]])
    identity_file: str | None = _f("a path to an age identity file", None, min_length=1,
                                   description="The private key file used to decrypt (restore, verify).",
                                   examples=["key.txt"])
    passphrase: str | None = _f("a passphrase, best given as ${VARIABLE}", None, min_length=1,
                                description="Encrypt and decrypt with a passphrase instead of, or as well as, keys.",
                                examples=["${BACKUP_PASSPHRASE}"])


def _sql_list(value: Any) -> Any:
    if isinstance(value, dict):  # database -> query or queries
        return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
    return [value] if isinstance(value, str) else value


class DrillFilesModel(_Model):
    min_count: Whole | None = _f("a whole number >= 0", None, ge=0,
                                 description="The restored tree must hold at least this many regular files (a "
                                 "backup of an emptied or unmounted directory restores fine, and holds nothing).",
                                 examples=[100])
    sample: Whole = _f("a whole number >= 0", 20, ge=0,
                       description="How many files, picked at random, are read back from the restored tree and "
                       "compared (sha256) with the archive's bytes.", examples=[50])


class DrillCheckModel(_Model):
    files: DrillFilesModel | None = _f("a mapping", None,
                                       description="directory sources: the restored tree holds as many entries as "
                                       "the manifest recorded at backup time, at least min_count files, and "
                                       "sampled files match the archive. Checked also when not set "
                                       "(sample: 20).", examples=[{"min_count": 100, "sample": 50}])
    integrity_check: bool | None = _f("true or false", None,
                                      description="sqlite sources: run PRAGMA integrity_check on the restored "
                                      "database (default true).", examples=[True])
    restore: bool | None = _f("true or false", None,
                              description="postgres sources: pg_restore each dump into a new scratch database on "
                              "the source's server (dropped afterwards; the live databases are not touched) "
                              "(default true). false: only check that pg_restore can read each dump.",
                              examples=[True])
    sql: Annotated[list[str] | dict[str, list[str]], BeforeValidator(_sql_list)] = _f(
        "an SQL query, a list of them, or a mapping of database names to queries", default_factory=list,
        description="sqlite and postgres sources (and plugins' database sources that support drills): queries "
        "run on the restored database (postgres: in the scratch database of each dump); each must return a "
        "true first value (not 0, NULL, false or no row). A source of several databases (postgres "
        "`databases:`) also takes a mapping of database names to the queries run in that one.",
        examples=[["SELECT count(*) > 0 FROM users"]])
    command: str | None = _f("a shell command", None, min_length=1,
                             description="Any source: a command run with the restored copy in $RESTORE_DIR (and "
                             "the source's name in $ETERNIA_SOURCE); exit status 0 passes.",
                             examples=["test -s \"$RESTORE_DIR/config.json\""])
    timeout: float = _f("a number of seconds > 0", 300.0, gt=0,
                        description="Seconds each check of this source may run (command, SQL); one that runs "
                        "longer fails.", examples=[60])


class DrillModel(_Model):
    schedule: str | None = _f("a 5-field cron expression such as '0 5 * * 0'", None,
                              description="When the scheduler (`run`, start_scheduler) runs a drill, in the "
                              "backup schedule's time zone; `status` fails when no drill ran in two periods. "
                              "Default: drills run only when asked (`eternia-backup drill`).",
                              examples=["0 5 * * 0"])
    backup: str = _f("a backup id or latest", "latest", min_length=1,
                     description="Which backup a drill restores.", examples=["latest"])
    checks: dict[str, DrillCheckModel] = _f("a mapping of source names to checks", default_factory=dict,
                                            description="Checks per source name, beside the defaults (entry "
                                            "count and sampled hashes for directory sources, integrity_check "
                                            "for sqlite); see below.",
                                            examples=[{"db": {"sql": "SELECT count(*) > 0 FROM users"}}])


class BackupModel(_Model):
    enabled: bool = _f("true or false", True,
                       description="Scheduled backups on or off; manual ones always work.", examples=[True])
    frequency: Literal["hourly", "daily", "weekly", "monthly"] = _f(
        "one of hourly, daily, weekly, monthly", "daily",
        description="When scheduled backups run: at the start of each hour, at midnight, at midnight on Monday, "
        "at midnight on the 1st.", examples=["daily"])
    timezone: str | None = _f("an IANA time zone name such as Europe/Berlin", None,
                              description="The time zone of the schedule and of the daily/weekly/... retention "
                              "buckets; default: the machine's.", examples=["Europe/Berlin"])
    retention_days: Whole | None = _f("a whole number >= 0", None, ge=0,
                                      description="Keep backups younger than this many days; 0 keeps every "
                                      "backup. The newest intact backup is never deleted.", examples=[7])
    storage_path: str | None = _f("a local directory path", None, min_length=1,
                                  description="A local directory for backups (a target named local); without any "
                                  "target, backups/ beside the config file. Made when missing, except under a "
                                  "mount point /etc/fstab lists that is not mounted (an unmounted NAS share or "
                                  "USB disk): create fails then instead of filling the disk beneath.",
                                  examples=["backups"])
    cloud_backup: CloudBackupModel | None = _f("a mapping", None, description="Copies in S3; see below.",
                                               examples=[{"enabled": True, "bucket": "eternia-backups"}])
    name: str = _f("a name made of letters, digits, '.', '_' or '-'", "eternia-backup", pattern=_NAME_RE,
                   description="The start of every archive's file name.", examples=["myapp"])
    environment: str | None = _f("a name made of letters, digits, '.', '_' or '-'", None, pattern=_NAME_RE,
                                 description="Separates deployments sharing a bucket; default: $ETERNIA_ENV, else "
                                 "default.", examples=["production"])
    sources: list[SourceModel] | None = _f("a list of sources", None,
                                           description="What is backed up; default: the directory data/ beside "
                                           "the config file.",
                                           examples=[[{"type": "directory", "name": "files", "path": "state/files"}]])
    targets: list[TargetModel] | None = _f("a list of targets", None,
                                           description="More places to store backups, by path or URL.",
                                           examples=[[{"name": "nas", "url": "/mnt/nas/backups"}]])
    archive: ArchiveModel = _f("a mapping", default_factory=ArchiveModel,
                               description="Archive format and compression; see below.",
                               examples=[{"compression": "zstd", "level": 3}])
    retention: RetentionModel = _f("a mapping", default_factory=RetentionModel,
                                   description="Which backups cleanup keeps; see below.",
                                   examples=[{"keep_last": 3, "keep_daily": 7}])
    schedule: ScheduleModel = _f("a mapping", default_factory=ScheduleModel,
                                 description="Cron schedule, catch-up and retries; see below.",
                                 examples=[{"cron": "30 2 * * *"}])
    hooks: HooksModel = _f("a mapping", default_factory=HooksModel,
                           description="Commands run once around all sources of a backup; see below.",
                           examples=[{"before_backup": "systemctl kill -s STOP myapp-writer",
                                      "after_backup": "systemctl kill -s CONT myapp-writer"}])
    notify: NotifyModel = _f("a mapping", default_factory=NotifyModel, description="Notifications; see below.",
                             examples=[{"webhook": {"url": "https://hooks.example/backup"}}])
    metrics: MetricsModel = _f("a mapping", default_factory=MetricsModel,
                               description="Prometheus metrics; see below.",
                               examples=[{"textfile": "/var/lib/node_exporter/eternia.prom"}])
    log: LogModel = _f("a mapping", default_factory=LogModel, description="Log output of the CLI; see below.",
                       examples=[{"format": "json"}])
    state_dir: str | None = _f("a local directory path", None, min_length=1,
                               description="Where the lock, the last-run state and temporary files (tmp/, "
                               "0700; never /tmp) are kept; default: beside the first local storage directory "
                               "(.<dir>.eternia) when this user can write its parent, else $XDG_STATE_HOME/eternia-backup or "
                               "~/.local/state/eternia-backup. One that cannot be made is an error (never a silent "
                               "move: two places would keep two records); set this for a service user without a home.",
                               examples=["/var/lib/eternia-backup"])
    encryption: EncryptionModel = _f("a mapping", default_factory=EncryptionModel,
                                     description="age encryption of the archives; see below.",
                                     examples=[{"enabled": True, "recipients": ["${AGE_RECIPIENT}"]}])
    drill: DrillModel = _f("a mapping", default_factory=DrillModel,
                           description="Restore drills: restore a backup into a scratch directory and check it; "
                           "see below.", examples=[{"schedule": "0 5 * * 0"}])


# -- the effective configuration -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    type: str
    name: str
    options: dict[str, Any]
    default: bool = False  # the data/ directory used when backup.sources is not set


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    name: str
    url: str
    options: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Retention:
    days: int = 0
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    incomplete_grace_hours: float = 24.0

    @property
    def keeps_everything(self) -> bool:
        return self.days == 0


FREQUENCY_CRON = {
    "hourly": "0 * * * *",  # start of each hour
    "daily": "0 0 * * *",  # midnight
    "weekly": "0 0 * * 1",  # midnight on Monday
    "monthly": "0 0 1 * *",  # midnight on the first of the month
}


@dataclasses.dataclass(frozen=True)
class Schedule:
    cron: str
    label: str  # "daily" or "cron 30 2 * * *"
    timezone: str | None  # None: the machine's local zone
    catch_up: bool = True
    retry_attempts: int = 3
    retry_backoff_seconds: float = 60.0
    lease_ttl_seconds: float = 300.0


@dataclasses.dataclass(frozen=True)
class Notifier:
    """One configured notifier: what it is, where it sends, and what it wants to hear about."""

    kind: str  # webhook, healthchecks, apprise
    key: str  # its key path, for messages: backup.notify.webhook[0]
    urls: tuple[str, ...]
    events: frozenset[str]
    operations: frozenset[str]
    timeout_seconds: float = 10.0

    def wants(self, operation: str, event: str) -> bool:
        """A run with warnings is a success too: a notifier that asked for success hears of it."""
        if operation not in self.operations:
            return False
        return event in self.events or (event == "warning" and "success" in self.events)

    def as_dict(self) -> dict[str, Any]:
        """What ``config show`` prints: URLs keep only their scheme and host (their paths hold tokens)."""
        shown = [_url_shown(u) for u in self.urls]
        return {**({"urls": shown} if self.kind == "apprise" else {"url": shown[0]}),
                "events": [e for e in NOTIFY_EVENTS if e in self.events],
                "operations": [o for o in NOTIFY_OPERATIONS if o in self.operations],
                "timeout_seconds": self.timeout_seconds}


def _url_shown(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return redact.MASK
    return f"{parts.scheme}://{host}/{redact.MASK}" if parts.scheme else redact.MASK


@dataclasses.dataclass(frozen=True)
class DrillChecks:
    """``backup.drill.checks.<source>``: what a drill checks on one restored source."""

    files_min_count: int | None = None
    files_sample: int = 20
    integrity_check: bool | None = None
    sql: tuple[str, ...] = ()
    command: str | None = None
    timeout: float = 300.0
    #: the keys set in the config (a source type refuses those it cannot check)
    keys: tuple[str, ...] = ()
    #: postgres: pg_restore into a scratch database (None: the default, true)
    restore: bool | None = None
    #: ``sql`` written as a mapping: (database, its queries) for sources of several databases
    sql_by_database: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclasses.dataclass(frozen=True)
class Drill:
    """``backup.drill``: restore drills."""

    schedule: str | None = None  # cron, in the backup schedule's zone
    backup: str = "latest"
    checks: dict[str, DrillChecks] = dataclasses.field(default_factory=dict)

    def checks_for(self, source: str) -> DrillChecks:
        return self.checks.get(source) or DrillChecks()


@dataclasses.dataclass(frozen=True)
class BackupConfig:
    """The validated, effective configuration that everything else reads."""

    name: str
    environment: str
    enabled: bool
    frequency: str
    timezone: str | None
    sources: tuple[SourceSpec, ...]
    targets: tuple[TargetSpec, ...]
    archive_format: str
    compression: str
    compression_level: int | None
    retention: Retention
    base_dir: Path
    path: Path | None = None
    schedule: Schedule = Schedule(FREQUENCY_CRON["daily"], "daily", None)
    notifiers: tuple[Notifier, ...] = ()
    metrics_textfile: Path | None = None
    metrics_listen: str | None = None
    log_format: str = "text"
    state_dir: Path | None = None
    encrypt: bool = False
    encryption: "EncryptionSettings | None" = None
    incremental: Incremental = Incremental()
    hooks: Hooks = Hooks()
    drill: Drill = Drill()

    def as_dict(self, *, masked: bool = True) -> dict[str, Any]:
        """The effective config as plain data (what ``config show`` prints)."""
        data = {
            "name": self.name,
            "environment": self.environment,
            "enabled": self.enabled,
            "frequency": self.frequency,
            "timezone": self.timezone,
            "sources": [{"type": s.type, "name": s.name, **s.options} for s in self.sources],
            "targets": [{"name": t.name, "url": t.url, "options": dict(t.options)} for t in self.targets],
            "archive": {"format": self.archive_format, "compression": self.compression, "level": self.compression_level,
                        "incremental": {"enabled": self.incremental.enabled,
                                        "full_every": self.incremental.full_every
                                        if self.incremental.full_after is None else self.incremental.text}},
            "retention": dataclasses.asdict(self.retention),
            "schedule": dataclasses.asdict(self.schedule),
            "hooks": dataclasses.asdict(self.hooks),
            "notify": {kind: [n.as_dict() for n in self.notifiers if n.kind == kind]
                       for kind in ("webhook", "healthchecks", "apprise")},
            "metrics": {"textfile": str(self.metrics_textfile) if self.metrics_textfile else None,
                        "listen": self.metrics_listen},
            "log": {"format": self.log_format},
            "state_dir": str(self.state_dir) if self.state_dir else None,
            "drill": {"schedule": self.drill.schedule, "backup": self.drill.backup,
                      "checks": {name: dataclasses.asdict(c) for name, c in self.drill.checks.items()}},
            "encryption": None if self.encryption is None else {
                "enabled": self.encrypt, "recipients": list(self.encryption.recipients),
                "identity_file": str(self.encryption.identity_file) if self.encryption.identity_file else None,
                "passphrase": self.encryption.passphrase,
            },
        }
        return redact.mask(data) if masked else data


# -- loading ---------------------------------------------------------------------


def application_dir() -> Path | None:
    """The directory of the application's main script (``python /srv/app/app.py``: /srv/app), or None.

    None when there is no script (an interactive session) or the main module is a
    launcher rather than the application: the ``eternia-backup`` CLI, a server such
    as gunicorn or uvicorn, anything installed in the interpreter's scripts,
    site-packages or standard library. Such applications pass ``base_dir``.
    """
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if not file or (spec is not None and (spec.name or "").split(".")[0] == "eternia_backup"):
        return None
    directory = Path(file).resolve().parent
    for key in ("scripts", "purelib", "platlib", "stdlib"):
        installed = sysconfig.get_path(key)
        if installed and directory.is_relative_to(Path(installed).resolve()):
            return None
    return directory


def find_config(path: str | os.PathLike | None = None, *, base_dir: str | os.PathLike | None = None) -> Path:
    """The config file, looked for in this order:

    1. ``path`` (``--config``), relative to ``base_dir`` when that is given;
    2. ``$ETERNIA_BACKUP_CONFIG``;
    3. ``eternia-backup.yaml`` in ``base_dir`` when given (the application says where it lives);
    4. otherwise ``eternia-backup.yaml`` in the current directory, then in the directory of the
       application's main script (:func:`application_dir`), so an application started from
       another directory (a service's ``/``) still finds the file beside it.
    """
    if path is not None:
        p = Path(path).expanduser()
        if base_dir is not None and not p.is_absolute():
            p = Path(base_dir).expanduser() / p
        candidates, where = [p], f"--config {path}" if base_dir is None else str(p)
    elif os.environ.get(CONFIG_ENV):
        candidates, where = [Path(os.environ[CONFIG_ENV]).expanduser()], f"${CONFIG_ENV}={os.environ[CONFIG_ENV]}"
    elif base_dir is not None:
        candidates = [Path(base_dir).expanduser() / DEFAULT_CONFIG_NAME]
        where = f"{candidates[0]} (base_dir; no config path and no ${CONFIG_ENV} given)"
    else:
        candidates = [Path(DEFAULT_CONFIG_NAME)]
        app = application_dir()
        if app is not None and app != Path.cwd().resolve():
            candidates.append(app / DEFAULT_CONFIG_NAME)
        where = " or ".join(f"./{c}" if not c.is_absolute() else str(c) for c in candidates) + \
            f" (no --config and no ${CONFIG_ENV} given)"
    for p in candidates:
        if p.is_file():
            return p.resolve()
    raise ConfigError(
        f"config file not found: {where}; write a starter config with `eternia-backup init`, "
        f"or pass --config PATH or set {CONFIG_ENV}"
    )


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, but a key given twice in one mapping is an error: YAML's "the last one
    wins" would let a repeated ``retention_days`` or a second ``backup:`` section (``enabled: false``)
    replace the first in silence. Only the ``backup:`` section is ours to refuse; keys brought in by a
    ``<<`` merge may still be overridden."""

    def construct_document(self, node):
        self._root = node
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first
                except TypeError:  # an unhashable key: SafeLoader refuses it itself
                    continue
                line = key_node.start_mark.line + 1
                keypath = (_node_path(self._root, node, "", str(key_node.value), set()) if seen else None) or ""
                if keypath == "backup" or keypath.startswith(("backup.", "backup[")):  # the rest is the app's
                    lines = f"lines {first[key]} and {line}" if first[key] != line else f"line {line}"
                    raise _DuplicateKey(f"{keypath}: given twice, at {lines} (YAML would keep only the "
                                        "last); remove one")
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def _node_path(node, target, keypath: str, key, visited: set[int]) -> str | None:
    """The key path (``backup.sources[0].name``) of ``key`` in mapping node ``target`` under ``node``."""
    if node is target:
        return _join(keypath, key).lstrip(".")
    if id(node) in visited:  # an alias of a node already searched (or of itself)
        return None
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        children = [(_join(keypath, getattr(k, "value", "?")), v) for k, v in node.value]
    elif isinstance(node, yaml.SequenceNode):
        children = [(f"{keypath}[{i}]", v) for i, v in enumerate(node.value)]
    else:
        return None
    for child_path, child in children:
        found = _node_path(child, target, child_path, key, visited)
        if found is not None:
            return found
    return None


def load_config(path: str | os.PathLike | None = None, *, base_dir: str | os.PathLike | None = None) -> BackupConfig:
    """Find (:func:`find_config`), read and validate the config file's ``backup:`` section."""
    p = find_config(path, base_dir=base_dir)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from exc
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{p}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
    if not isinstance(document, dict) or "backup" not in document:
        raise ConfigError(f"{p}: no 'backup:' section; add one (`eternia-backup init --path FILE` writes an "
                          "example to copy from)")
    return parse_config(document["backup"], base_dir=p.parent, path=p)


def config_from_mapping(mapping: Any, *, base_dir: str | os.PathLike | None = None) -> BackupConfig:
    """A config from data already in memory: a ``backup:`` section, or a whole document holding one.

    Relative paths are relative to ``base_dir``, by default the application's
    directory (:func:`application_dir`), else the current directory.
    """
    if isinstance(mapping, dict) and "backup" in mapping:  # a whole document (no section has a key "backup")
        mapping = mapping["backup"]
    if base_dir is None:
        base_dir = application_dir() or Path.cwd()
    return parse_config(mapping, base_dir=base_dir)


def parse_config(section: Any, *, base_dir: str | os.PathLike, path: Path | None = None,
                 environ: dict[str, str] | None = None) -> BackupConfig:
    """Validate a ``backup:`` mapping (already read from YAML) into a BackupConfig."""
    environ = os.environ if environ is None else environ
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"backup: expected a mapping of settings, got {_show(section)}")
    section = _expand_env(section, "backup", environ)
    redact.find_secrets(section)
    try:
        model = BackupModel.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, section)) from None
    return _effective(model, Path(base_dir).resolve(), path, environ)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, keypath: str, environ) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, _join(keypath, k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{keypath}[{i}]", environ) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    secret = redact.is_secret_key(re.sub(r"\[\d+\]$", "", keypath).rsplit(".", 1)[-1])

    def substitute(m: re.Match) -> str:
        var, default = m.group(1), m.group(2)
        if secret:  # a passphrase's or secret key's variable: dump commands and hooks never see it
            process.withhold_env(var)
        value = environ.get(var)
        if default is not None and not value:
            return default  # like the shell's ${VAR:-default}: unset or empty
        if value is not None:
            redact.remember_expanded(value)  # a password given as ${VAR} inside a command or DSN
            return value
        raise ConfigError(
            f"{keypath}: environment variable {var} is not set; set it or write ${{{var}:-default}}"
        )

    return _VAR.sub(substitute, value)


def _join(keypath: str, key: Any) -> str:
    return f"{keypath}[{key}]" if isinstance(key, int) else f"{keypath}.{key}"


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {type(value).__name__ if not isinstance(value, dict) else 'mapping'}"
    return repr(value)


def _field_info(loc: tuple) -> tuple[type[BaseModel] | None, Any]:
    """The model holding the last key of ``loc`` and that key's FieldInfo."""
    model: Any = BackupModel
    info = None
    for i, part in enumerate(loc):
        if isinstance(part, int) or model is None:
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return (model if i == len(loc) - 1 else None), None
        info = fields[part]
        if i == len(loc) - 1:
            return model, info
        model = _model_in(info.annotation)
    return model, info


def _model_in(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def unknown_key_hint(key: str, allowed: list[str]) -> str:
    """'; did you mean ...?' for a misspelt key, else the keys that exist."""
    hint = difflib.get_close_matches(key, allowed, n=1)
    return f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(allowed)}"


def _format_errors(exc: ValidationError, section: dict) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        keypath = "backup"
        node: Any = section
        for part in loc:
            if isinstance(part, int) and not isinstance(node, list):
                continue  # notify.<kind>: a single mapping was given; no [0] in the message
            keypath = _join(keypath, part)
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
        model, info = _field_info(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = list(getattr(model, "model_fields", {})) if model else []
            lines.append(f"{keypath}: unknown key{unknown_key_hint(str(loc[-1]), allowed)}")
            continue
        if kind == "missing":
            expected = (info.json_schema_extra or {}).get("expected") if info else None
            lines.append(f"{keypath}: required key is missing" + (f"; expected {expected}" if expected else ""))
            continue
        expected = None
        if info is not None and isinstance(info.json_schema_extra, dict):
            expected = info.json_schema_extra.get("expected")
        if kind in ("model_type", "dict_type") and loc and isinstance(loc[-1], int):
            expected = "a mapping"
        if kind == "list_type":
            expected = "a list"
        found = _show(err.get("input"))
        hint = ""
        if kind == "literal_error" and isinstance(err.get("input"), str):
            close = difflib.get_close_matches(err["input"], re.findall(r"'([^']*)'", err["ctx"]["expected"]), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        lines.append(f"{keypath}: expected {expected or err['msg'].lower()}, got {found}{hint}")
    return "; ".join(dict.fromkeys(lines))


def _effective(model: BackupModel, base_dir: Path, path: Path | None, environ) -> BackupConfig:
    environment = model.environment or environ.get("ETERNIA_ENV") or "default"
    if not re.match(_NAME_RE, environment):
        raise ConfigError(f"ETERNIA_ENV: expected a name made of letters, digits, '.', '_' or '-', got {environment!r}")

    retention = model.retention
    if model.retention_days is not None and retention.days is not None and model.retention_days != retention.days:
        raise ConfigError(
            f"backup.retention_days ({model.retention_days}) and backup.retention.days "
            f"({retention.days}) disagree; set only one of them"
        )
    explicit_days = model.retention_days if model.retention_days is not None else retention.days
    days = explicit_days or 0
    keeps = {k: getattr(retention, k) or 0 for k in
             ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")}
    if explicit_days == 0 and any(keeps.values()):
        raise ConfigError(
            "backup.retention_days: 0 keeps every backup forever, so the keep_* rules under backup.retention "
            "would never delete anything; remove retention_days to let the keep_* rules decide, or remove them"
        )
    effective_retention = Retention(days=days, incomplete_grace_hours=retention.incomplete_grace_hours, **keeps)

    sources = _sources(model, base_dir)
    targets = _targets(model, base_dir, environment)

    schedule = _schedule(model)
    notifiers = _notifiers(model.notify)
    metrics = Path(_local_url(model.metrics.textfile, base_dir)) if model.metrics.textfile else None
    if model.metrics.listen is not None:
        parse_listen(model.metrics.listen)
    state_dir = Path(_local_url(model.state_dir, base_dir)) if model.state_dir else None
    enc = model.encryption
    if enc.enabled and not enc.recipients and not enc.passphrase:
        raise ConfigError("backup.encryption: enabled needs recipients (age1... public keys) or a passphrase; "
                          "make a key with `eternia-backup keygen`")
    settings = None
    if enc.enabled or enc.identity_file or enc.passphrase or enc.recipients:
        settings = EncryptionSettings(tuple(enc.recipients),
                                      Path(_local_url(enc.identity_file, base_dir)) if enc.identity_file else None,
                                      enc.passphrase)

    return BackupConfig(
        name=model.name,
        environment=environment,
        enabled=model.enabled,
        frequency=model.frequency,
        timezone=schedule.timezone,
        sources=tuple(sources),
        targets=tuple(targets),
        archive_format=model.archive.format,
        compression=model.archive.compression,
        compression_level=model.archive.level,
        retention=effective_retention,
        base_dir=base_dir,
        path=path,
        schedule=schedule,
        notifiers=notifiers,
        metrics_textfile=metrics,
        metrics_listen=model.metrics.listen,
        log_format=model.log.format,
        state_dir=state_dir,
        encrypt=enc.enabled,
        encryption=settings,
        incremental=_incremental(model.archive.incremental),
        hooks=Hooks(model.hooks.before_backup, model.hooks.after_backup, model.hooks.on_error,
                    dict(model.hooks.env), model.hooks.timeout),
        drill=_drill(model.drill, sources),
    )


def _drill(model: DrillModel, sources: list[SourceSpec]) -> Drill:
    if model.schedule is not None:
        _check_cron(model.schedule, "backup.drill.schedule")
    names = [s.name for s in sources]
    checks = {}
    for name, c in model.checks.items():
        if name not in names:
            raise ConfigError(f"backup.drill.checks.{name}: no source is named {name!r}; the sources are: "
                              f"{', '.join(names)}")
        if c.restore is False and c.sql:
            raise ConfigError(f"backup.drill.checks.{name}.sql: the queries run in the restored scratch database, "
                              "and restore is false; remove sql, or set restore: true")
        files = c.files or DrillFilesModel()
        by_database = tuple((db, tuple(q)) for db, q in c.sql.items()) if isinstance(c.sql, dict) else ()
        checks[name] = DrillChecks(files.min_count, files.sample, c.integrity_check,
                                   () if by_database else tuple(c.sql), c.command, c.timeout,
                                   tuple(k for k in c.model_fields_set if k != "timeout"), c.restore, by_database)
    return Drill(model.schedule.strip() if model.schedule else None, model.backup, checks)


def parse_listen(text: str, key: str = "backup.metrics.listen") -> tuple[str, int]:
    """``host:port`` (``[::1]:9101`` for IPv6) -> (host, port); a ConfigError naming ``key`` otherwise."""
    host, sep, port = str(text).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: expected host:port such as 127.0.0.1:9101 (a port from 1 to 65535), "
                          f"got {text!r}")
    return host, int(port)


def _notifiers(model: NotifyModel) -> tuple[Notifier, ...]:
    found = []
    for kind, entries in (("webhook", model.webhook), ("healthchecks", model.healthchecks),
                          ("apprise", model.apprise)):
        defaults = {"webhook": ("failure",), "healthchecks": ("start", "success", "failure"),
                    "apprise": ("warning", "failure")}[kind]
        for i, entry in enumerate(entries):
            key = f"backup.notify.{kind}[{i}]" if len(entries) > 1 else f"backup.notify.{kind}"
            events = entry.events
            if kind == "webhook" and entry.on_success is not None:
                if events is not None:
                    raise ConfigError(f"{key}: set events or on_success, not both (on_success: true is "
                                      "events: [success, failure])")
                events = ["success", "failure"] if entry.on_success else ["failure"]
            if events is not None and not events:
                raise ConfigError(f"{key}.events: empty; list at least one of {', '.join(NOTIFY_EVENTS)} "
                                  f"(or remove the {kind} entry)")
            if entry.operations is not None and not entry.operations:
                raise ConfigError(f"{key}.operations: empty; list at least one of {', '.join(NOTIFY_OPERATIONS)}")
            operations = entry.operations or (("backup",) if kind == "healthchecks" else ("backup", "drill"))
            if kind == "apprise" and not entry.urls:
                raise ConfigError(f"{key}.urls: empty; list at least one apprise URL")
            if kind == "apprise" and importlib.util.find_spec("apprise") is None:
                raise ConfigError(f"{key}: needs the apprise package; install it with "
                                  "`pip install 'eternia-backup[apprise]'` (or remove backup.notify.apprise)")
            urls = tuple(entry.urls) if kind == "apprise" else (entry.url,)
            for url in urls:  # a ping URL or a Slack webhook is a password: never logged or shown
                redact.remember(url)
            found.append(Notifier(kind, key, urls, frozenset(events or defaults), frozenset(operations),
                                  entry.timeout_seconds))
    return tuple(found)


def _incremental(model: IncrementalModel) -> Incremental:
    from .increments import parse_duration

    every = model.full_every
    if isinstance(every, str):
        return Incremental(model.enabled, None, parse_duration(every), every)
    return Incremental(model.enabled, every, None)


def _schedule(model: BackupModel) -> Schedule:
    s = model.schedule
    if s.timezone and model.timezone and s.timezone != model.timezone:
        raise ConfigError("backup.timezone and backup.schedule.timezone disagree; set only one of them")
    tz = s.timezone or model.timezone
    if tz is not None:
        _check_timezone(tz, "backup.schedule.timezone" if s.timezone else "backup.timezone")
    if s.cron is not None:
        if "frequency" in model.model_fields_set:
            raise ConfigError("backup.frequency and backup.schedule.cron are both set; use one of them")
        _check_cron(s.cron)
        cron, label = s.cron.strip(), f"cron {s.cron.strip()}"
    else:
        cron, label = FREQUENCY_CRON[model.frequency], model.frequency
    return Schedule(cron, label, tz, s.catch_up, s.retry_attempts, s.retry_backoff_seconds, s.lease_ttl_seconds)


def _check_cron(expr: str, key: str = "backup.schedule.cron") -> None:
    from datetime import datetime
    from datetime import timezone as dt_timezone

    from cronsim import CronSim, CronSimError

    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=dt_timezone.utc))
    except (CronSimError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"{key}: expected a 5-field cron expression such as '30 2 * * *', got {expr!r} ({exc})"
        ) from None


def _check_timezone(name: str, key: str = "backup.timezone") -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{key}: expected an IANA time zone name such as Europe/Berlin, got {name!r}"
        ) from None


def _sources(model: BackupModel, base_dir: Path) -> list[SourceSpec]:
    if model.sources is None:
        return [SourceSpec("directory", "data", {"path": "data"}, default=True)]
    if not model.sources:
        raise ConfigError("backup.sources: expected at least one source, got an empty list")
    seen: dict[str, int] = {}
    specs = []
    for i, src in enumerate(model.sources):
        if src.name in seen:
            raise ConfigError(
                f"backup.sources[{i}].name: {src.name!r} is already used by backup.sources[{seen[src.name]}]; "
                "source names must be unique"
            )
        seen[src.name] = i
        specs.append(SourceSpec(src.type, src.name, dict(src.model_extra or {})))
    return specs


def _targets(model: BackupModel, base_dir: Path, environment: str) -> list[TargetSpec]:
    targets: list[TargetSpec] = []
    if model.storage_path is not None:
        targets.append(TargetSpec("local", _local_url(model.storage_path, base_dir), {}))
    cloud = model.cloud_backup
    if cloud is not None and cloud.enabled:
        targets.append(_cloud_target(cloud, environment))
    for i, t in enumerate(model.targets or []):
        name = t.name or f"target{i + 1}"
        url = t.url if "://" in t.url else _local_url(t.url, base_dir)
        targets.append(TargetSpec(name, url, dict(t.options)))
    if not targets:
        targets.append(TargetSpec("local", _local_url("backups", base_dir), {}))
    names: dict[str, str] = {}
    for t in targets:
        if t.name in names:
            raise ConfigError(
                f"backup.targets: two targets are named {t.name!r}; give each target a unique name"
            )
        names[t.name] = t.url
    return targets


def _local_url(path: str, base_dir: Path) -> str:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = base_dir / p
    return str(p)


def _cloud_target(cloud: CloudBackupModel, environment: str) -> TargetSpec:
    """The target named ``cloud``, from the plugin that serves ``cloud_backup.provider`` (aws: the S3 plugin)."""
    from .plugins import cloud_backup_target

    settings = cloud.model_dump(exclude={"enabled"})
    found = cloud_backup_target(settings, environment)
    if found is None:
        raise ConfigError(
            f"backup.cloud_backup.provider: no installed plugin serves {cloud.provider!r} (aws is built in); "
            "for other stores give any fsspec URL under backup.targets instead"
        )
    url, options = found
    return TargetSpec("cloud", url, options)
