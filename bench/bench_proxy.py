"""Proxy benchmark: throughput, added latency per hop, CPU and memory, on one machine in one run.

Paths under the same load, side by side:
  direct     wrk → nginx
  one hop    wrk → server-side proxy (inbound, --inbound-forward) → nginx
  haproxy    wrk → HAProxy (one thread, keep-alive to nginx): the peer for the one hop
  two hops   wrk → client-side proxy (outbound, forward proxy by Host) → server-side proxy → nginx
  bare relay wrk → a 25-line gevent relay → nginx: the floor of any gevent proxy
and over HTTP/2 (h2c, prior knowledge), unless --no-h2:
  h2 direct / one hop / haproxy   h2load -c 32 -m 10 → (proxy | HAProxy `proto h2`) → nginx `listen … http2`
  grpc direct / one hop           a grpcio unary echo, 32 calls in flight, from this process
Saturated throughput comes from `wrk -t1 -c32` (keep-alive, small responses, nginx-light with one
worker answering `return 200`, so the proxy is the bottleneck), the paths taking turns for
`--rounds` rounds, median. Latency is measured at a fixed rate (default 1000 rps) by a paced client
that times each request from its *scheduled* send time (no coordinated omission), in
`--latency-rounds` rounds; in each round direct, one hop and two hops take turns in one-second
slices, the added latency is proxied minus direct *of that round*, and the median over rounds is
reported with its [min, max]. Memory is the server-side proxy's RSS after warm-up and after at least
100k requests. Prints one JSON object on its last line. Figures, not pass/fail; on a shared
machine compare the ratios within one run.

`--profile` instead profiles the one-hop proxy during one saturated round (cProfile, made
greenlet-aware) and prints the functions with the most own time per request; `--profile-h2` and
`--profile-grpc` do the same under h2load and under the grpcio echo.

Usage (from the repository's root): python -m bench.bench_proxy [--duration 5] [--rounds 3]
        [--rate 1000] [--latency-rounds 5] [--latency-seconds 3] [--connections 32] [--no-h2]
        [--profile | --profile-h2 | --profile-grpc]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import bench_h2_floor
from kubectl_mesh.procs import Proc, free_ports, spawn
from lab.runtime import runtime_pythonpath
from tests.support.proxy_process import ProxyProcess, start_proxy

REPO = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"


def start(tmp: Path, name: str, argv: list[str], port: int) -> Proc:
    """Start a helper (nginx, HAProxy, the relay) and wait until it listens on `port`."""
    proc = spawn(name, argv, tmp / f"{name}.log")
    try:
        proc.wait_ready(port, timeout=20)
    except BaseException:
        proc.stop()
        raise
    return proc


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far: per request, a figure other load on the machine barely moves."""
    return sum(cpu_times(pid))


def rss_mib(proxy: ProxyProcess) -> float:
    return proxy.rss_kib() / 1024


def server_proxy(
    tmp: Path, nginx_port: int, launcher: list[str] | None = None, extra: tuple[str, ...] = (), name: str = ""
) -> ProxyProcess:
    """The server-side proxy, inbound forwarding to nginx (`launcher`: e.g. under the profiler)."""
    return start_proxy(tmp, "--inbound-forward", f"127.0.0.1:{nginx_port}", *extra,
                       identity=("bench", "deployment", "server", "server-0"), log_level="warning",
                       launcher=launcher or ("-m", "proxy"), name=name or "server-proxy")  # fmt: skip


def tap_subscriber(proxy: ProxyProcess) -> socket.socket:
    """A `kubectl mesh tap` stand-in on the proxy's tap port, reading (and dropping) every event."""
    sock = socket.create_connection(("127.0.0.1", proxy.tap), timeout=5)
    sock.sendall(b"GET /tap?max_rps=100 HTTP/1.0\r\nHost: localhost\r\n\r\n")
    sock.settimeout(None)

    def drain() -> None:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    threading.Thread(target=drain, daemon=True).start()
    return sock


# The floor of any gevent proxy on this machine: bytes in, bytes out, one upstream connection
# per client connection, no parsing, no metrics (the environment notes' "minimal relay").
BARE_RELAY = """
import sys
from gevent import socket
from gevent.server import StreamServer
UPSTREAM = ("127.0.0.1", int(sys.argv[2]))
def handle(client, _):
    upstream = socket.create_connection(UPSTREAM)
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            data = client.recv(65536)
            if not data:
                return
            upstream.sendall(data)
            data = upstream.recv(65536)
            if not data:
                return
            client.sendall(data)
    except OSError:
        pass
    finally:
        upstream.close()
StreamServer(("127.0.0.1", int(sys.argv[1])), handle).serve_forever()
"""

# The peer: what a mature event-loop proxy does with one core, the same backend and the same load.
HAPROXY_CONFIG = """global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  maxconn 4096
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
frontend one_hop
  bind 127.0.0.1:{port}
  default_backend nginx
backend nginx
  server nginx 127.0.0.1:{backend}
"""  # no `log` line: HAProxy logs nothing, like the proxy at --log-level warning


def start_haproxy(tmp: Path, backend: int) -> tuple[Proc, int]:
    (port,) = free_ports(1)
    (tmp / "haproxy.cfg").write_text(HAPROXY_CONFIG.format(port=port, backend=backend))
    # -db: foreground, one process (its CPU is /proc/pid)
    return start(tmp, "haproxy", [HAPROXY, "-db", "-f", str(tmp / "haproxy.cfg")], port), port


# `python -m proxy` under cProfile, on from SIGUSR1 to SIGUSR2 (then the stats are written). cProfile
# keeps one stack per thread, so greenlet switches would charge one greenlet's time to another's
# functions; closing the open frames at each switch keeps every function's own time right (only
# what a frame does after it resumes from a switch, a few lines at most, goes uncounted).
PROFILED_PROXY = """
import cProfile, os, runpy, signal, sys
import greenlet
stats = sys.argv[1]
sys.argv = ["proxy", *sys.argv[2:]]
profiler = cProfile.Profile()
def restart(event, args):
    profiler.disable()
    profiler.enable()
def start(signum, frame):
    greenlet.settrace(restart)
    profiler.enable()
def stop(signum, frame):
    profiler.disable()
    greenlet.settrace(None)
    profiler.dump_stats(stats + ".tmp")
    os.replace(stats + ".tmp", stats)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
runpy.run_module("proxy", run_name="__main__", alter_sys=True)
"""


def wrk(port: int, duration: float, host: str | None = None, connections: int = 32) -> tuple[float, int]:
    """Saturated run; returns (requests per second, requests completed)."""
    argv = [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", f"http://127.0.0.1:{port}/"]
    if host:
        argv[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not rps or not total or errors:
        raise SystemExit(f"bench_proxy: wrk failed or saw errors:\n{out}")
    return float(rps.group(1)), int(total.group(1))


def paced_latencies(port: int, host: str, rate: float, seconds: float) -> list[float]:
    """Latency (ms) of requests sent on a fixed schedule over one keep-alive connection.

    Each latency runs from the scheduled send time, so a stall delays and counts every request
    behind it instead of hiding them (coordinated omission).
    """
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    interval = 1.0 / rate
    count = int(rate * seconds)
    latencies = []
    start = time.perf_counter() + 0.05
    buf = b""
    try:
        for i in range(count):
            scheduled = start + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0.0003:  # sleep most of the gap; spin only the last 0.3 ms (2 shared cores)
                time.sleep(delay - 0.0003)
            while time.perf_counter() < scheduled:
                pass
            sock.sendall(request)
            while True:  # read one response: head, then Content-Length bytes
                end = buf.find(b"\r\n\r\n")
                if end != -1:
                    length = int(re.search(rb"(?i)content-length:\s*(\d+)", buf[:end]).group(1))  # type: ignore[union-attr]
                    if len(buf) >= end + 4 + length:
                        buf = buf[end + 4 + length :]
                        break
                piece = sock.recv(65536)
                if not piece:
                    raise SystemExit("bench_proxy: connection closed during the latency run")
                buf += piece
            latencies.append((time.perf_counter() - scheduled) * 1000.0)
    finally:
        sock.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median_and_spread(values: list[float]) -> tuple[float, list[float]]:
    return round(statistics.median(values), 3), [round(min(values), 3), round(max(values), 3)]


def measure(args: argparse.Namespace, tmp: Path, nginx_port: int, started: list[ProxyProcess],
            helpers: list[Proc]) -> dict[str, Any]:  # fmt: skip
    server = server_proxy(tmp, nginx_port)
    started.append(server)
    client = start_proxy(tmp, "--inbound-forward", "127.0.0.1:9",
                         identity=("bench", "deployment", "client", "client-0"), log_level="warning",
                         name="client-proxy")  # fmt: skip
    started.append(client)
    (relay_port,) = free_ports(1)
    relay = start(
        tmp, "bare-relay", [sys.executable, "-c", BARE_RELAY, str(relay_port), str(nginx_port)], relay_port
    )
    helpers.append(relay)
    haproxy, haproxy_port = start_haproxy(tmp, nginx_port)
    helpers.append(haproxy)
    # The tap's cost: the same proxy with no tap listener, and one with a subscriber attached.
    untapped = server_proxy(tmp, nginx_port, extra=("--tap-port", "0"), name="untapped-proxy")
    started.append(untapped)
    tapped = server_proxy(tmp, nginx_port, name="tapped-proxy")
    started.append(tapped)
    subscriber = tap_subscriber(tapped)

    server_authority = f"127.0.0.1:{server.inbound}"
    paths = {
        "direct": (nginx_port, None),
        "one_hop": (server.inbound, None),
        "two_hops": (client.outbound, server_authority),
    }
    # In this order, reversed every other round: one_hop and its peer always back to back.
    saturated_paths = {
        "direct": paths["direct"],
        "one_hop_untapped": (untapped.inbound, None),
        "one_hop": paths["one_hop"],
        "one_hop_tapped": (tapped.inbound, None),
        "haproxy_one_hop": (haproxy_port, None),
        "two_hops": paths["two_hops"],
        "bare_relay": (relay_port, None),
    }
    for port, host in saturated_paths.values():  # warm-up: connections, pools, caches
        wrk(port, 1, host, args.connections)
    rss_warm = rss_mib(server)
    rss_warm_client = rss_mib(client)

    # CPU per request of the process doing the one hop (the figure other load moves least).
    measured_pid = {"one_hop": server.process.pid, "haproxy_one_hop": haproxy.pid}
    cpu = {name: 0.0 for name in measured_pid}
    served = {name: 0 for name in measured_pid}
    rps: dict[str, list[float]] = {name: [] for name in saturated_paths}
    for round_ in range(args.rounds):
        order = list(saturated_paths) if round_ % 2 == 0 else list(reversed(saturated_paths))
        for name in order:
            port, host = saturated_paths[name]
            pid = measured_pid.get(name)
            cpu_before = cpu_seconds(pid) if pid else 0.0
            rate, completed = wrk(port, args.duration, host, args.connections)
            if pid:
                cpu[name] += cpu_seconds(pid) - cpu_before
                served[name] += completed
            rps[name].append(rate)
            print(f"saturated {name}: {rate:.0f} rps", file=sys.stderr)

    # Latency in rounds; within a round the three paths take turns in one-second slices, so a burst
    # of other load lands on all alike, and each round's added latency is proxied minus direct of
    # that same round. Medians over rounds, with their spread, because one round's p99 is noise.
    names = list(paths)
    samples: dict[str, list[float]] = {name: [] for name in paths}
    rounds: list[dict[str, dict[str, float]]] = []
    slices = max(1, round(args.latency_seconds))
    for round_ in range(args.latency_rounds):
        this: dict[str, list[float]] = {name: [] for name in paths}
        for slice_ in range(slices):
            k = (round_ * slices + slice_) % len(names)
            for name in names[k:] + names[:k]:
                port, host = paths[name]
                this[name] += paced_latencies(port, host or f"127.0.0.1:{port}", args.rate, 1.0)
        rounds.append({n: {"p50": percentile(v, 0.50), "p99": percentile(v, 0.99)} for n, v in this.items()})
        for name, values in this.items():
            samples[name] += values
        shown = ", ".join(f"{n} p50 {r['p50']:.3f} p99 {r['p99']:.3f}" for n, r in rounds[-1].items())
        print(f"latency round {round_ + 1} (ms): {shown}", file=sys.stderr)
    added: dict[str, list[float]] = {"p50": [], "p99": [], "p50_two": [], "p99_two": []}
    for r in rounds:
        for q in ("p50", "p99"):
            added[q].append(r["one_hop"][q] - r["direct"][q])
            added[f"{q}_two"].append((r["two_hops"][q] - r["direct"][q]) / 2)
    lat = {n: {"p50": percentile(v, 0.50), "p99": percentile(v, 0.99)} for n, v in samples.items()}

    for _ in range(50):  # memory after at least 100k requests (the rounds above usually did it)
        if server.value("request_total") >= 100_000:
            break
        wrk(server.inbound, 3, None, args.connections)
    served_total = server.value("request_total")
    rss_after = rss_mib(server)
    rss_after_client = rss_mib(client)

    subscriber.close()
    med = {name: statistics.median(values) for name, values in rps.items()}
    cpu_us = {name: cpu[name] / max(1, served[name]) * 1e6 for name in cpu}
    p50, p50_spread = median_and_spread(added["p50"])
    p99, p99_spread = median_and_spread(added["p99"])
    p50_two, p50_two_spread = median_and_spread(added["p50_two"])
    p99_two, p99_two_spread = median_and_spread(added["p99_two"])
    return {
        "rps_direct": round(med["direct"]),
        "rps_one_hop": round(med["one_hop"]),
        "rps_haproxy_one_hop": round(med["haproxy_one_hop"]),
        "ratio_vs_haproxy": round(med["one_hop"] / med["haproxy_one_hop"], 3),
        "rps_two_hops": round(med["two_hops"]),
        "rps_bare_gevent_relay": round(med["bare_relay"]),
        "ratio_one_hop_to_direct": round(med["one_hop"] / med["direct"], 3),
        "ratio_one_hop_to_bare_relay": round(med["one_hop"] / med["bare_relay"], 3),
        "ratio_two_hops_to_one_hop": round(med["two_hops"] / med["one_hop"], 3),
        # The tap listener with nobody tapping, against no tap listener at all (#14: within 2%),
        # and a proxy with one subscriber (at most 100 events per second) against the untapped one.
        "tap_idle_rps_ratio": round(med["one_hop"] / med["one_hop_untapped"], 3),
        "tap_active_rps_ratio": round(med["one_hop_tapped"] / med["one_hop_untapped"], 3),
        "rps_one_hop_untapped": round(med["one_hop_untapped"]),
        "rps_one_hop_tapped": round(med["one_hop_tapped"]),
        "cpu_us_per_request": round(cpu_us["one_hop"], 1),
        "cpu_us_per_request_haproxy": round(cpu_us["haproxy_one_hop"], 1),
        "p50_ms": {k: round(v["p50"], 3) for k, v in lat.items()},
        "p99_ms": {k: round(v["p99"], 3) for k, v in lat.items()},
        "added_p50_ms_per_hop": p50,
        "added_p50_ms_per_hop_spread": p50_spread,
        "added_p99_ms_per_hop": p99,
        "added_p99_ms_per_hop_spread": p99_spread,
        "added_p50_ms_per_hop_two_hop_path": p50_two,
        "added_p50_ms_per_hop_two_hop_path_spread": p50_two_spread,
        "added_p99_ms_per_hop_two_hop_path": p99_two,
        "added_p99_ms_per_hop_two_hop_path_spread": p99_two_spread,
        "p99_ms_direct_spread": median_and_spread([r["direct"]["p99"] for r in rounds])[1],
        "cpu_us_per_request_one_hop": round(cpu_us["one_hop"], 1),  # the same figure, its former name
        "rps_per_proxy_core_estimate": round(served["one_hop"] / max(cpu["one_hop"], 1e-9)),
        "rss_mib_warm": round(rss_warm, 1),
        "rss_mib_after_100k": round(rss_after, 1),
        "rss_mib_client_warm": round(rss_warm_client, 1),
        "rss_mib_client_after": round(rss_after_client, 1),
        "server_proxy_requests": int(served_total),
        "latency_rate_rps": args.rate,
        "latency_rounds": f"{args.latency_rounds} x {slices}s per path (median of per-round differences)",
        "wrk": f"-t1 -c{args.connections} -d{round(args.duration)}s x{args.rounds} (median)",
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# HTTP/2: the same peer, with h2c on both sides (HAProxy 2.6: `proto h2` on bind and server).
HAPROXY_H2_CONFIG = """global
  nbthread 1
  maxconn 4096
defaults
  mode http
  http-reuse always
  maxconn 4096
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend one_hop
  bind 127.0.0.1:{port} proto h2
  default_backend nginx
backend nginx
  server nginx 127.0.0.1:{backend} proto h2
"""


def h2load(port: int, duration: float) -> tuple[float, int]:
    """Saturated HTTP/2 run, `h2load -c 32 -m 10` (the issue's load); (requests/s, completed)."""
    argv = [H2LOAD, "-c", "32", "-m", "10", "-D", str(max(1, round(duration))), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    rate = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not rate or not done or int(done.group(3)):
        raise SystemExit(f"bench_proxy: h2load failed or saw failures:\n{out}")
    return float(rate.group(1)), int(done.group(2))


def h2_latencies(port: int, tmp: Path, count: int) -> list[float]:
    """One stream at a time (`h2load -c1 -m1 --log-file`): each request's time in ms."""
    log = tmp / f"h2load-{port}.log"
    argv = [H2LOAD, "-c", "1", "-m", "1", "-n", str(count), f"--log-file={log}", f"http://127.0.0.1:{port}/"]
    subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    # Lines: start time (µs since the epoch), status, duration (µs).
    return [int(line.split("\t")[2]) / 1000.0 for line in log.read_text().splitlines() if line.strip()]


def measure_h2(args: argparse.Namespace, tmp: Path, h2_port: int, started: list[ProxyProcess],
               helpers: list[Proc]) -> dict[str, Any]:  # fmt: skip
    """h2load through one proxy and through HAProxy against nginx over h2c; then RSS after ≥100k streams."""
    server = server_proxy(tmp, h2_port)
    started.append(server)
    (haproxy_port,) = free_ports(1)
    (tmp / "haproxy-h2.cfg").write_text(HAPROXY_H2_CONFIG.format(port=haproxy_port, backend=h2_port))
    haproxy = start(tmp, "haproxy-h2", [HAPROXY, "-db", "-f", str(tmp / "haproxy-h2.cfg")], haproxy_port)
    helpers.append(haproxy)
    paths = {"direct": h2_port, "one_hop": server.inbound, "haproxy_one_hop": haproxy_port}
    for port in paths.values():
        h2load(port, 1)
    rss_warm = rss_mib(server)
    cpu_before = cpu_seconds(server.process.pid)
    served = 0
    rps: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(args.rounds):
        order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
        for name in order:
            rate, completed = h2load(paths[name], args.duration)
            rps[name].append(rate)
            if name == "one_hop":
                served += completed
            print(f"saturated h2 {name}: {rate:.0f} rps", file=sys.stderr)
    cpu = cpu_seconds(server.process.pid) - cpu_before
    added = []
    for round_ in range(args.latency_rounds):
        direct = percentile(h2_latencies(h2_port, tmp, 2000), 0.5)
        one_hop = percentile(h2_latencies(server.inbound, tmp, 2000), 0.5)
        added.append(one_hop - direct)
        print(
            f"h2 latency round {round_ + 1} (ms): direct p50 {direct:.3f}, one_hop p50 {one_hop:.3f}",
            file=sys.stderr,
        )
    for _ in range(20):  # RSS after at least 100k streams
        if server.value("request_total") >= 100_000:
            break
        h2load(server.inbound, 3)
    med = {name: statistics.median(values) for name, values in rps.items()}
    p50, p50_spread = median_and_spread(added)
    return {
        "h2_rps_direct": round(med["direct"]),
        "h2_rps_one_hop": round(med["one_hop"]),
        "h2_rps_haproxy_one_hop": round(med["haproxy_one_hop"]),
        "h2_ratio_vs_haproxy": round(med["one_hop"] / med["haproxy_one_hop"], 3),
        "h2_cpu_us_per_stream": round(cpu / max(1, served) * 1e6, 1),
        "h2_added_p50_ms_per_hop": p50,
        "h2_added_p50_ms_per_hop_spread": p50_spread,
        "h2_rss_mib_warm": round(rss_warm, 1),
        "h2_rss_mib_after_100k_streams": round(rss_mib(server), 1),
        "h2_server_proxy_streams": int(server.value("request_total")),
        "h2load": f"-c 32 -m 10 -D {round(args.duration)} x{args.rounds} (median); latency -c1 -m1 -n2000",
    }


def grpc_rate(target: str, seconds: float, in_flight: int = 32) -> float:
    """Unary echo calls per second from this process, `in_flight` at a time, for `seconds`."""
    import grpc  # only the benchmark's gRPC part needs it

    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    unary = channel.unary_unary("/mesh.test.Echo/Unary")
    unary(b"warm", timeout=10)
    done = 0
    failed: list[BaseException] = []
    deadline = time.monotonic() + seconds
    finished = threading.Event()
    lock = threading.Lock()
    running = [in_flight]

    def fire() -> None:
        unary.future(b"hi", timeout=10).add_done_callback(on_done)

    def on_done(future: Any) -> None:
        nonlocal done
        if future.exception() is not None:
            failed.append(future.exception())
        with lock:
            done += 1
        if time.monotonic() < deadline and not failed:
            fire()
        else:
            with lock:
                running[0] -= 1
                if running[0] == 0:
                    finished.set()

    started = time.monotonic()
    for _ in range(in_flight):
        fire()
    finished.wait(seconds + 30)
    elapsed = time.monotonic() - started
    channel.close()
    if failed:
        raise SystemExit(f"bench_proxy: gRPC calls failed: {failed[0]!r}")
    return done / elapsed


def start_grpc_app(tmp: Path, helpers: list[Proc]) -> int:
    """The grpcio echo server (tests/support/grpc_app.py) in its own process; its port."""
    port_file = tmp / "grpc-port"
    argv = [sys.executable, "-m", "tests.support.grpc_app", str(port_file)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRPC_ENABLE_FORK_SUPPORT": "0"}
    app = spawn("grpc-app", argv, tmp / "grpc-app.log", env=env)
    helpers.append(app)
    app.wait_ready(lambda: port_file.exists() and port_file.read_text() != "", timeout=20)
    return int(port_file.read_text())


def measure_grpc(args: argparse.Namespace, tmp: Path, started: list[ProxyProcess],
                 helpers: list[Proc]) -> dict[str, Any]:  # fmt: skip
    """A grpcio unary echo, direct and through one proxy, taking turns in the same run."""
    grpc_port = start_grpc_app(tmp, helpers)
    server = server_proxy(tmp, grpc_port)
    started.append(server)
    paths = {"direct": f"127.0.0.1:{grpc_port}", "one_hop": f"127.0.0.1:{server.inbound}"}
    rps: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(args.rounds):
        order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
        for name in order:
            rate = grpc_rate(paths[name], args.duration)
            rps[name].append(rate)
            print(f"saturated grpc {name}: {rate:.0f} rps", file=sys.stderr)
    med = {name: statistics.median(values) for name, values in rps.items()}
    return {
        "grpc_rps_direct": round(med["direct"]),
        "grpc_rps_one_hop": round(med["one_hop"]),
        "grpc_ratio_one_hop": round(med["one_hop"] / med["direct"], 3),
        "grpc_client": f"grpcio unary, 32 in flight, {round(args.duration)}s x{args.rounds} (median)",
    }


def _code_roots() -> tuple[str, ...]:
    """Where the proxy's code runs from: the checkout, or the tests' world-readable copy of it."""
    return (f"{REPO}/", f"{runtime_pythonpath()}/")


def _where(filename: str, line: int, name: str) -> str:
    if filename == "~":
        return name
    for marker in (*_code_roots(), "site-packages/", "/lib/python3."):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({name})"


def _area(filename: str, name: str) -> str:
    if any(filename.startswith(f"{root}proxy/") for root in _code_roots()):
        return "proxy (Python)"
    if "/gevent/" in filename or (filename == "~" and ("gevent" in name or "greenlet" in name)):
        return "gevent and greenlet"
    if filename == "~" and "_socket.socket" in name:
        return "socket calls (syscalls)"
    if filename == "~":
        return "other built-ins (C)"
    return "other Python (stdlib, libraries)"


def profile(
    args: argparse.Namespace, tmp: Path, nginx_port: int, started: list[ProxyProcess]
) -> dict[str, Any]:
    """One saturated one-hop round unprofiled, then one under cProfile; own time per request
    (per stream with `--profile-h2`: h2load against nginx over h2c)."""
    stats_path = tmp / "one_hop.pstats"
    server = server_proxy(tmp, nginx_port, ["-c", PROFILED_PROXY, str(stats_path)])
    started.append(server)
    pid = server.process.pid

    def load(seconds: float) -> tuple[float, int]:
        if args.profile_h2:
            return h2load(server.inbound, seconds)
        if args.profile_grpc:
            rate = grpc_rate(f"127.0.0.1:{server.inbound}", seconds)
            return rate, round(rate * seconds)
        return wrk(server.inbound, seconds, None, args.connections)

    load(2)  # warm-up
    user0, system0 = cpu_times(pid)
    rate, completed = load(args.duration)
    user1, system1 = cpu_times(pid)
    server.process.send_signal(signal.SIGUSR1)
    time.sleep(0.5)  # the handler runs at the proxy's next signal check (idle: within 0.3 s)
    cpu_before = cpu_seconds(pid)
    rate_profiled, completed_profiled = load(args.duration)
    cpu_profiled = cpu_seconds(pid) - cpu_before
    server.process.send_signal(signal.SIGUSR2)
    for _ in range(200):
        if stats_path.exists():
            break
        time.sleep(0.1)
    else:
        raise SystemExit(f"bench_proxy: no profile written; the proxy's log:\n{server.log()}")
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = pstats.Stats(str(stats_path)).stats  # type: ignore[attr-defined]
    per_request = 1e6 / max(1, completed_profiled)
    rows = sorted(((tt, nc, key) for key, (_, nc, tt, _, _) in raw.items()), reverse=True)
    total = sum(tt for tt, _, _ in rows)
    areas: dict[str, float] = {}
    for tt, _, key in rows:
        area = _area(key[0], key[2])
        areas[area] = areas.get(area, 0.0) + tt * per_request
    top = [
        {
            "us": round(tt * per_request, 2),
            "calls": round(nc * per_request / 1e6, 2),
            "function": _where(*key),
        }
        for tt, nc, key in rows[: args.profile_top]
    ]
    counted, spent = total * per_request, cpu_profiled * per_request
    user, system = (user1 - user0) / max(1, completed) * 1e6, (system1 - system0) / max(1, completed) * 1e6
    print(f"\nunprofiled: {rate:.0f} rps, CPU per request {user + system:.1f} us = {user:.1f} user + "
          f"{system:.1f} system (kernel)", file=sys.stderr)  # fmt: skip
    print(f"under cProfile: {rate_profiled:.0f} rps, CPU per request {spent:.1f} us "
          f"({spent / max(user + system, 1e-9):.1f}x: the profiler's cost, most on functions called "
          f"most); own time (wall clock) counted {counted:.1f} us:", file=sys.stderr)  # fmt: skip
    print(f"{'us/req':>8} {'calls/req':>9}  function", file=sys.stderr)
    for row in top:
        print(f"{row['us']:8.2f} {row['calls']:9.2f}  {row['function']}", file=sys.stderr)
    print("\nby area (us per request, under cProfile):", file=sys.stderr)
    for area, us in sorted(areas.items(), key=lambda item: -item[1]):
        print(f"{us:8.2f}  {area}", file=sys.stderr)
    return {
        "profile": "h2_one_hop" if args.profile_h2 else "grpc_one_hop" if args.profile_grpc else "one_hop",
        "rps_one_hop": round(rate),
        "cpu_us_per_request": round(user + system, 1),
        "cpu_us_per_request_user": round(user, 1),
        "cpu_us_per_request_system": round(system, 1),
        "rps_one_hop_profiled": round(rate_profiled),
        "cpu_us_per_request_profiled": round(spent, 1),
        "profiled_us_per_request_counted": round(counted, 1),
        "profiled_us_per_request_by_area": {area: round(us, 1) for area, us in areas.items()},
        "top_by_own_time": top,
        "load": f"h2load -c 32 -m 10 -D {round(args.duration)}"
        if args.profile_h2
        else f"grpcio unary echo, 32 in flight, {round(args.duration)} s"
        if args.profile_grpc
        else f"wrk -t1 -c{args.connections} -d{round(args.duration)}s",
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def start_nginx(tmp: Path, helpers: list[Proc]) -> tuple[int, int]:
    """nginx-light with one worker answering `return 200` over HTTP/1.1 and h2c; its two ports."""
    nginx_port, h2_port = free_ports(2)
    (tmp / "nginx.conf").write_text(
        f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{nginx_port}; location / {{ return 200 "ok\\n"; }} }}
  server {{ listen 127.0.0.1:{h2_port} http2; location / {{ return 200 "ok\\n"; }} }}
}}
"""
    )
    helpers.append(start(tmp, "nginx", [NGINX, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], nginx_port))
    return nginx_port, h2_port


def stop_all(started: list[ProxyProcess], helpers: list[Proc], tmp: Path) -> None:
    """Stop the proxies, then the helpers (last started first), and remove the scratch directory."""
    for proxy in started:
        proxy.stop()
    for helper in reversed(helpers):
        helper.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per saturated wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="saturated runs per path (median reported)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second for latency")
    parser.add_argument("--latency-rounds", type=int, default=5, help="latency rounds (median of per-round)")
    parser.add_argument("--latency-seconds", type=float, default=3.0, help="seconds per path per round")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--no-h2", action="store_true", help="HTTP/1.1 only (skip h2load and gRPC)")
    parser.add_argument("--profile", action="store_true", help="only profile the one-hop proxy (cProfile)")
    parser.add_argument("--profile-h2", action="store_true", help="--profile over HTTP/2 (h2load, nginx h2c)")
    parser.add_argument("--profile-grpc", action="store_true", help="--profile over gRPC (the grpcio echo)")
    parser.add_argument("--profile-top", type=int, default=25, help="functions listed by --profile")
    args = parser.parse_args()
    for tool, package in (
        (NGINX, "nginx-light"),
        (WRK, "wrk"),
        (HAPROXY, "haproxy"),
        (H2LOAD, "nghttp2-client"),
    ):
        profiling = args.profile or args.profile_h2 or args.profile_grpc
        if not Path(tool).exists() and not (profiling and package == "haproxy"):
            print(f"bench_proxy: {tool} is missing: apt-get install -y {package} "
                  "(or scripts/install-system-deps.sh)", file=sys.stderr)  # fmt: skip
            return 1

    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    started: list[ProxyProcess] = []
    helpers: list[Proc] = []
    try:
        nginx_port, h2_port = start_nginx(tmp, helpers)
        if args.profile_grpc:
            result = profile(args, tmp, start_grpc_app(tmp, helpers), started)
        elif args.profile or args.profile_h2:
            result = profile(args, tmp, h2_port if args.profile_h2 else nginx_port, started)
        else:
            result = measure(args, tmp, nginx_port, started, helpers)
            if not args.no_h2:
                result.update(measure_h2(args, tmp, h2_port, started, helpers))
                result.update(measure_grpc(args, tmp, started, helpers))
                floor = bench_h2_floor.run(20_000, 10)["h2_floor_us_per_stream"]
                result["h2_floor_us_per_stream"] = floor  # h2 alone, no sockets (bench_h2_floor)
                result["h2_floor_share_of_proxy_cpu"] = round(floor / result["h2_cpu_us_per_stream"], 3)
    finally:
        stop_all(started, helpers, tmp)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
