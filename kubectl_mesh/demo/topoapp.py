"""The app of every workload in a topology (kubectl_mesh.demo.topology): small, standard library.

`serve`: on `GET /` it calls each of its callees once, in order (`GET /`), and answers 500 when
one of them failed (5xx or no answer) or when its own rule says so (every `FAIL_EVERY`-th
request it serves), else 200. A hop counter in its own header (not the mesh's) stops a cycle
after MAX_HOPS calls. `client`: calls its callees `REQUEST_RATE` times a second, forever.

Each counts by itself what it served, failed, failed on its own, and sent to each callee
(`GET /counters` on COUNTERS_PORT, a port the mesh leaves alone), so tests compare the mesh's
answers with the truth. Calls honour `http_proxy` (the demo's explicit mode); in a cluster they go
to the callee's Service and the proxy intercepts them.

Run: `python3 -m kubectl_mesh.demo.topoapp serve|client`, configured by the environment:
`BIND` (0.0.0.0), `PORT` (8080), `COUNTERS_PORT` (8801), `CALLS` (`name=host:port,…`),
`FAIL_EVERY` (0: never), `REQUEST_RATE` (client, per second, 1), `UPSTREAM_TIMEOUT` (5 s).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubectl_mesh.demo.lifecycle import stop_on_signals, wait_then_shutdown

HOPS_HEADER = "x-topology-hops"
MAX_HOPS = 4


class Counters:
    """What this workload served and sent, counted by itself (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.served = 0
        self.failed = 0
        self.own_failures = 0
        self.loops = 0  # the client's requests
        self.sent: dict[str, dict[str, int]] = {}

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"served": self.served, "failed": self.failed, "own_failures": self.own_failures,
                    "loops": self.loops, "sent": {k: dict(v) for k, v in self.sent.items()}}  # fmt: skip


class App:
    """One workload: its callees, its own failure rule, how it reaches the network."""

    def __init__(
        self,
        calls: Mapping[str, str],
        fail_every: int = 0,
        opener: urllib.request.OpenerDirector | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.calls = dict(calls)  # callee -> host:port
        self.fail_every = fail_every
        self.opener = opener or urllib.request.build_opener()  # http_proxy from the environment
        self.timeout = timeout
        self.counters = Counters()

    def call(self, callee: str, hops: int) -> int | None:
        """GET / on `callee`; its status, None when it did not answer."""
        request = urllib.request.Request(f"http://{self.calls[callee]}/", headers={HOPS_HEADER: str(hops)})
        status: int | None
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            exc.read()
            status = exc.code
        except (OSError, ValueError):
            status = None
        with self.counters.lock:
            sent = self.counters.sent.setdefault(callee, {"requests": 0, "failed": 0})
            sent["requests"] += 1
            sent["failed"] += status is None or status >= 500
        return status

    def handle(self, hops: int) -> int:
        """Serve one request that came `hops` calls deep: call every callee, then decide."""
        with self.counters.lock:
            self.counters.served += 1
            own = self.fail_every > 0 and self.counters.served % self.fail_every == 0
        failed_calls = 0
        if hops < MAX_HOPS:
            for callee in self.calls:
                status = self.call(callee, hops + 1)
                failed_calls += status is None or status >= 500
        with self.counters.lock:
            self.counters.own_failures += own
            self.counters.failed += own or failed_calls > 0
        return 500 if own or failed_calls else 200

    def drive(self, rate: float, stop: threading.Event, requests: int = 0) -> None:
        """The client: every callee once per loop, `rate` loops a second, until `stop` (or
        `requests` loops, when above 0)."""
        start, paced, done = time.monotonic(), 0, 0
        while not stop.is_set() and (requests <= 0 or done < requests):
            for callee in self.calls:
                self.call(callee, 0)
            with self.counters.lock:
                self.counters.loops += 1
            done += 1
            paced += 1
            delay = start + paced / rate - time.monotonic()
            if delay < -1.0:  # fell behind (a slow callee): carry on at the rate, no burst
                start, paced = time.monotonic(), 0
            stop.wait(max(0.0, delay))


def serve(app: App, bind: str, port: int, *, counters_only: bool = False) -> ThreadingHTTPServer:
    """`GET /` (the app) or `GET /counters` and `/healthz` (counters_only), in a thread."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if counters_only:
                path = self.path.split("?", 1)[0]
                if path == "/counters":
                    self._answer(200, json.dumps(app.counters.snapshot()).encode(), "application/json")
                elif path == "/healthz":
                    self._answer(200, b"ok\n")
                else:
                    self._answer(404, b"not found\n")
                return
            try:
                hops = max(0, int(self.headers.get(HOPS_HEADER, "0")))
            except ValueError:
                self._answer(400, b"bad hop count\n")
                return
            status = app.handle(hops)
            self._answer(status, b"ok\n" if status == 200 else b"failed\n")

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"topoapp-{port}", daemon=True).start()
    return server


def parse_calls(text: str) -> dict[str, str]:
    """`a=host:port,b=host:port` -> {a: host:port, …}, in order."""
    calls: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("=")
        if not sep or not name or ":" not in address:
            raise ValueError(f"CALLS: {item!r} is not name=host:port")
        calls[name] = address
    return calls


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    if args not in (["serve"], ["client"]):
        print("usage: python3 -m kubectl_mesh.demo.topoapp serve|client", file=sys.stderr)
        return 2
    stop = stop_on_signals()
    try:
        bind = env.get("BIND", "0.0.0.0")
        port, counters_port = int(env.get("PORT", "8080")), int(env.get("COUNTERS_PORT", "8801"))
        rate = float(env.get("REQUEST_RATE", "1"))
        app = App(parse_calls(env.get("CALLS", "")), int(env.get("FAIL_EVERY", "0")),
                  timeout=float(env.get("UPSTREAM_TIMEOUT", "5")))  # fmt: skip
        if rate <= 0:
            raise ValueError("REQUEST_RATE must be above 0")
        servers = [serve(app, bind, counters_port, counters_only=True)]
        if args == ["serve"]:
            servers.append(serve(app, bind, port))
    except (OSError, ValueError) as exc:
        print(f"topoapp: {exc}", file=sys.stderr)
        return 1
    print(f"topoapp {args[0]}: calls {', '.join(app.calls) or 'nothing'}", file=sys.stderr, flush=True)
    if args == ["client"]:
        app.drive(rate, stop)
    return wait_then_shutdown(stop, servers)


if __name__ == "__main__":
    sys.exit(main())
