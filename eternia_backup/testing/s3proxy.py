"""A counting HTTP proxy in front of an S3 endpoint, to count the requests a command makes.

Every request is forwarded unchanged (Host included, so signatures hold) and recorded
as (method, path); ``take()`` counts them by kind. ``hold()`` keeps chosen requests
waiting until ``release()``: an upload stalled at a known point. Used by
tests/test_manifest_cache.py, tests/test_s3.py and benchmarks/bench.py.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections import Counter


class CountingProxy:
    """Forwards every request to ``upstream`` unchanged (Host included, so signatures hold) and counts it."""

    def __init__(self, upstream: str):
        self.upstream = upstream.split("://", 1)[1]
        self.requests: list[tuple[str, str]] = []
        self._hold = None  # (method, path) -> bool: requests kept waiting until release()
        self._released = threading.Event()
        self.held = 0  # how many requests have waited
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()

            def _forward(self):
                body = self._body()
                proxy.requests.append((self.command, self.path))
                if proxy._hold is not None and proxy._hold(self.command, self.path):
                    proxy.held += 1
                    proxy._released.wait(120)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # A HEAD answer has no body but says the object's length.
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def hold(self, matches) -> None:
        """Keep every request for which ``matches(method, path)`` is true waiting until :meth:`release`."""
        self._released.clear()
        self._hold = matches

    def release(self) -> None:
        """Let the held requests (and those to come) through."""
        self._hold = None
        self._released.set()

    def take(self) -> Counter:
        """What was asked since the last take: {(method, kind)}, kind 'manifest', 'list' or 'other'."""
        taken, self.requests = self.requests, []
        counts: Counter = Counter()
        for method, path in taken:
            kind = "manifest" if path.split("?")[0].endswith(".manifest.json") else \
                "list" if "list-type=2" in path or (method == "GET" and path.count("/") == 1 and "?" in path) \
                else "other"
            counts[(method, kind)] += 1
        return counts

    def close(self):
        self.release()
        self.server.shutdown()
        self.server.server_close()
