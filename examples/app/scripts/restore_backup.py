"""The restore script of the project's original description: list, restore PATH, download s3://bucket/key.

    python scripts/restore_backup.py list
    python scripts/restore_backup.py restore /path/to/backup/file
    python scripts/restore_backup.py download s3://bucket/key

It is the ``eternia-backup`` CLI with this application's config file.
"""

import os
import sys
from pathlib import Path

from eternia_backup.cli import main

if __name__ == "__main__":
    os.environ.setdefault("ETERNIA_BACKUP_CONFIG", str(Path(__file__).resolve().parent.parent / "eternia-backup.yaml"))
    sys.exit(main(sys.argv[1:]))
