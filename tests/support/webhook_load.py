"""Hostile clients of the webhook, held open in a process of their own (gevent), for the load tests.

    python -m tests.support.webhook_load --port P --ca CA [--idle N] [--slow-head N]
        [--slow-body N] [--held-body N --body-size B] [--held-head N --head-size B] [--hold S]
        [--tls no]

- `idle`: TCP connections that never send a byte (not even a TLS hello);
- `slow-head`: TLS, then a request head one byte every `--interval` seconds;
- `slow-body`: TLS, a whole head, then its body one byte every `--interval` seconds;
- `held-body`: TLS, a head with `Content-Length: B`, then B - 1 bytes, and nothing more;
- `held-head`: TLS, then header fields of `--head-size` bytes in all, in lines of `--head-line`
  bytes, without the blank line that ends them, and nothing more.

`--tls no`: every kind speaks plain HTTP (the metrics port).

Prints `ready {...}` once every connection is open (or failed), then every second
`status {...}`: how many of each kind are still open and how many the server closed. Exits
after `--hold` seconds, or at SIGTERM. `LoadClients` runs it with `kubectl_mesh.procs`.
Every count and time is bounded by its arguments.
"""

from __future__ import annotations

if __name__ == "__main__":  # the clients' own process only: importing LoadClients patches nothing
    from gevent import monkey

    monkey.patch_all()

import argparse
import json
import resource
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import gevent

from kubectl_mesh.procs import Proc, spawn

KINDS = ("idle", "slow_head", "slow_body", "held_body", "held_head")
HEAD = b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"


class Stats:
    def __init__(self) -> None:
        self.open = dict.fromkeys(KINDS, 0)
        self.closed_by_server = dict.fromkeys(KINDS, 0)
        self.failed = dict.fromkeys(KINDS, 0)
        self.sent = dict.fromkeys(KINDS, 0)  # bytes the server took (into its socket buffers)
        self.pending = 0

    def line(self, word: str) -> None:
        fields = {
            "open": self.open,
            "closed_by_server": self.closed_by_server,
            "failed": self.failed,
            "sent": self.sent,
        }
        print(word, json.dumps(fields), flush=True)


def _connect(args: argparse.Namespace, tls: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=30)
    if not tls or args.tls == "no":
        return sock
    ctx = ssl.create_default_context(cafile=args.ca)
    return ctx.wrap_socket(sock, server_hostname="mesh-webhook.mesh-system.svc")


def _wait_closed(sock: socket.socket) -> None:
    """Block until the server closes the connection (EOF, reset, or any answer, then EOF)."""
    sock.settimeout(None)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _trickle(sock: socket.socket, data: bytes, interval: float, sent: dict[str, int], kind: str) -> None:
    try:
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
            sent[kind] += 1
            gevent.sleep(interval)
    except OSError:
        pass  # closed by the server: counted by the reader


def _send(sock: socket.socket, data: bytes, sent: dict[str, int], kind: str) -> None:
    view = memoryview(data)
    try:
        while view:
            n = sock.send(view[:65536])
            sent[kind] += n
            view = view[n:]
    except OSError:
        pass


def run_one(kind: str, args: argparse.Namespace, stats: Stats) -> None:
    try:
        sock = _connect(args, tls=kind != "idle")
    except OSError:
        stats.failed[kind] += 1
        stats.pending -= 1
        return
    stats.open[kind] += 1
    stats.pending -= 1
    worker = None
    try:
        head = HEAD + b"Content-Length: 2\r\n\r\n{}"
        if kind == "slow_head":
            worker = gevent.spawn(_trickle, sock, head, args.interval, stats.sent, kind)
        elif kind == "slow_body":
            sock.sendall(HEAD + b"Content-Length: 1000\r\n\r\n")
            worker = gevent.spawn(_trickle, sock, b" " * 1000, args.interval, stats.sent, kind)
        elif kind == "held_head":
            lines = max(1, args.head_size // args.head_line)
            value = b"v" * (args.head_line - 10)
            fields = b"".join(b"X-F%02d: %s\r\n" % (i, value) for i in range(lines))
            worker = gevent.spawn(_send, sock, HEAD + fields, stats.sent, kind)
        elif kind == "held_body":
            sock.sendall(HEAD + f"Content-Length: {args.body_size}\r\n\r\n".encode())
            worker = gevent.spawn(_send, sock, b" " * (args.body_size - 1), stats.sent, kind)
        _wait_closed(sock)
        stats.closed_by_server[kind] += 1
    finally:
        stats.open[kind] -= 1
        if worker is not None:
            worker.kill(block=False)
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    for kind in KINDS:
        parser.add_argument(f"--{kind.replace('_', '-')}", type=int, default=0, metavar="N")
    parser.add_argument("--body-size", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--head-size", type=int, default=15 * 1000)
    parser.add_argument("--head-line", type=int, default=1000, help="bytes per header line")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between trickled bytes")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds to hold, at most")
    parser.add_argument("--tls", choices=("yes", "no"), default="yes", help="no: plain HTTP")
    args = parser.parse_args(argv)
    if not Path(args.ca).is_file():
        print(f"error: no CA file {args.ca}", file=sys.stderr)
        return 2
    total = sum(getattr(args, kind) for kind in KINDS)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if total + 64 > hard:
        print(f"error: {total} connections need more descriptors than {hard}", file=sys.stderr)
        return 2
    stats = Stats()
    stats.pending = total
    greenlets = []
    for kind in KINDS:
        for _ in range(getattr(args, kind)):
            greenlets.append(gevent.spawn(run_one, kind, args, stats))
            if len(greenlets) % 100 == 0:
                gevent.sleep(0)  # let the opened ones start their own work
    deadline = time.monotonic() + args.hold
    while stats.pending > 0 and time.monotonic() < deadline:
        gevent.sleep(0.05)
    stats.line("ready")
    while time.monotonic() < deadline:
        gevent.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        stats.line("status")
    gevent.killall(greenlets, block=True, timeout=5)
    stats.line("done")
    return 0


class LoadClients:
    """`webhook_load` as a child process, for a test: start, read its last status, stop."""

    def __init__(self, log_path: Path, port: int, ca_file: Path, **options: Any) -> None:
        self.log_path = log_path
        self.argv = [sys.executable, "-m", "tests.support.webhook_load"]
        self.argv += ["--port", str(port), "--ca", str(ca_file)]
        for name, value in options.items():
            self.argv += [f"--{name.replace('_', '-')}", str(value)]
        self.proc: Proc | None = None

    def __enter__(self) -> LoadClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        """Start the clients; returns the `ready` line once every connection is open or failed."""
        repo = Path(__file__).resolve().parents[2]
        self.proc = spawn("webhook load clients", self.argv, self.log_path, cwd=repo)
        self.proc.wait_ready(lambda: self.last("ready") is not None, timeout, tail=20)
        ready = self.last("ready")
        assert ready is not None
        return ready

    def last(self, word: str = "status") -> dict[str, Any] | None:
        """The last line starting with `word` (ready, status, done), parsed."""
        found = None
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith(word + " "):
                found = json.loads(line[len(word) + 1 :])
        return found

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=10)


if __name__ == "__main__":
    sys.exit(main())
