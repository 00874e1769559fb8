"""``eternia-backup init``: a commented starter config that works as written.

The active keys are the original description's, with the values the README
shows; everything else is a commented example to switch on. With a ``data/``
directory beside it, ``eternia-backup create`` succeeds at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError

STARTER_CONFIG = """\
# eternia-backup configuration. Check it with `eternia-backup config check`;
# every key is described in docs/configuration.md (or `eternia-backup config schema`).
backup:
  enabled: true                # automated backups on/off (manual ones always work)
  frequency: daily             # hourly, daily, weekly, monthly (or schedule.cron below)
  retention_days: 7            # 0 = keep forever; the newest good backup is never deleted
  storage_path: backups        # local directory, relative to this file

  cloud_backup:                # copies in S3; credentials from the standard AWS chain
    enabled: false             # set true once the bucket exists
    provider: aws
    bucket: eternia-backups
    region: us-west-2

  # What to back up. Without `sources:`, the directory data/ beside this file.
  # sources:
  #   - {type: directory, name: files, path: data, exclude: ["*.tmp", cache]}
  #   - {type: sqlite, name: db, path: state/app.db}      # a consistent online copy
  #   - {type: command, name: pg, command: "pg_dump -Fc mydb",
  #      restore_command: "pg_restore -d mydb --clean"}

  # More places to keep copies, by path or fsspec URL:
  # targets:
  #   - {name: nas, url: /mnt/nas/backups}

  # archive: {format: tar, compression: zstd, level: 3}  # zstd, gzip, xz, none
  # retention: {keep_last: 3, keep_daily: 7, keep_weekly: 4, keep_monthly: 12}
  # timezone: Europe/Berlin    # for the schedule and the times shown; default: this machine's
  # schedule: {cron: "30 2 * * *", catch_up: true}      # instead of frequency

  # Encryption at rest with age: `eternia-backup keygen -o key.txt` prints a recipient.
  # encryption: {enabled: true, recipients: ["age1..."], identity_file: key.txt}

  # Alerts and metrics:
  # notify:                   # see docs/monitoring.md
  #   healthchecks: {url: "https://hc-ping.com/YOUR-CHECK-UUID"}   # /start, success, /fail
  #   webhook: {url: "https://hooks.example/backup", events: [warning, failure]}
  # metrics: {textfile: /var/lib/node_exporter/eternia.prom}
"""


def write_starter(path: str | os.PathLike, *, option: str = "") -> Path:
    """Write the starter config to ``path``; never replaces an existing file. ``option`` is what
    the commands the messages suggest need to find it (``-c myapp.yaml ``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "eternia-backup.yaml"
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UsageError(f"{p} already exists; it was left as it is (choose another file, "
                         f"or check it with `eternia-backup {option}config check`)") from None
    except OSError as exc:
        raise UsageError(f"cannot write {p}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(STARTER_CONFIG)
    return p.absolute()
