"""Proxy benchmark: throughput, added latency per hop, and memory, on one machine in one run.

Three paths under the same load, side by side:
  direct     wrk → nginx
  one hop    wrk → server-side proxy (inbound, --inbound-forward) → nginx
  two hops   wrk → client-side proxy (outbound, forward proxy by Host) → server-side proxy → nginx
Saturated throughput comes from `wrk -t1 -c32` (keep-alive, small responses, nginx-light with one
worker answering `return 200`, so the proxy is the bottleneck). Latency is measured at a fixed
rate (default 1000 rps) by a paced client that times each request from its *scheduled* send time
(no coordinated omission). Memory is the server-side proxy's RSS after warm-up and after at least
100k requests. Prints one JSON object on its last line. Figures, not pass/fail; on a shared
machine compare the ratios within one run.

Usage: python bench/bench_proxy.py [--duration 5] [--rounds 2] [--rate 1000] [--latency-seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from kubectl_mesh.demo.ports import free_ports

REPO = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench_proxy: nothing listening on 127.0.0.1:{port}")


class Proxy:
    def __init__(self, tmp: Path, name: str, args: list[str], profile: bool) -> None:
        self.inbound, self.outbound, self.admin = free_ports(3)
        argv = [
            sys.executable, "-m", "proxy", "run", "--log-level", "warning",
            "--inbound-addr", "127.0.0.1", "--inbound-port", str(self.inbound),
            "--outbound-port", str(self.outbound),
            "--admin-addr", "127.0.0.1", "--admin-port", str(self.admin), *args,
        ]  # fmt: skip
        if profile:
            argv[1:3] = ["-m", "cProfile", "-s", "tottime", "-m", "proxy"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = (tmp / f"{name}.log").open("wb")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=self.log, env=env)
        wait_port(self.admin)
        wait_port(self.inbound)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far: per request, a figure other load on the machine barely moves."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def requests(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(float(m.group(1)) for m in re.finditer(r"^request_total\{[^}]*\} (\S+)$", text, re.M))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per saturated wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="saturated runs per path (median reported)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second for latency")
    parser.add_argument("--latency-seconds", type=float, default=8.0, help="seconds per latency run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--profile", action="store_true", help="run the server-side proxy under cProfile")
    args = parser.parse_args()
    for tool in (NGINX, WRK):
        if not Path(tool).exists():
            print(f"bench_proxy: {tool} is missing (apt-get install -y nginx-light wrk)", file=sys.stderr)
            return 1

    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    (nginx_port,) = free_ports(1)
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
}}
"""
    )
    started: list[Proxy] = []
    relay: subprocess.Popen[bytes] | None = None
    nginx = subprocess.Popen(
        [NGINX, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], stderr=subprocess.DEVNULL
    )
    try:
        wait_port(nginx_port)
        server = Proxy(tmp, "server-proxy", ["--inbound-forward", f"127.0.0.1:{nginx_port}",
                       "--namespace", "bench", "--workload-kind", "deployment", "--workload-name", "server",
                       "--pod", "server-0"], args.profile)  # fmt: skip
        started.append(server)
        client = Proxy(tmp, "client-proxy", ["--inbound-forward", "127.0.0.1:9", "--namespace", "bench",
                       "--workload-kind", "deployment", "--workload-name", "client", "--pod", "client-0"],
                       False)  # fmt: skip
        started.append(client)
        (relay_port,) = free_ports(1)
        relay = subprocess.Popen(
            [sys.executable, "-c", BARE_RELAY, str(relay_port), str(nginx_port)], stderr=subprocess.DEVNULL
        )
        wait_port(relay_port)
        server_authority = f"127.0.0.1:{server.inbound}"
        paths = {
            "direct": (nginx_port, None),
            "one_hop": (server.inbound, None),
            "two_hops": (client.outbound, server_authority),
        }
        saturated_paths = {**paths, "bare_relay": (relay_port, None)}
        for port, host in paths.values():  # warm-up: connections, pools, caches
            wrk(port, 1, host, args.connections)
        rss_warm = server.rss_mib()
        rss_warm_client = client.rss_mib()

        rps: dict[str, list[float]] = {name: [] for name in saturated_paths}
        cpu_one_hop, requests_one_hop = 0.0, 0
        for round_ in range(args.rounds):
            order = list(saturated_paths) if round_ % 2 == 0 else list(reversed(saturated_paths))
            for name in order:
                port, host = saturated_paths[name]
                cpu_before = server.cpu_seconds()
                rate, completed = wrk(port, args.duration, host, args.connections)
                if name == "one_hop":
                    cpu_one_hop += server.cpu_seconds() - cpu_before
                    requests_one_hop += completed
                rps[name].append(rate)
                print(f"saturated {name}: {rate:.0f} rps", file=sys.stderr)

        # Latency in one-second slices, the paths taking turns, so a burst of other load on the
        # machine lands on all three alike instead of on whichever path was running.
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for slice_ in range(max(1, round(args.latency_seconds))):
            order = list(paths)[slice_ % 3 :] + list(paths)[: slice_ % 3]
            for name in order:
                port, host = paths[name]
                samples[name] += paced_latencies(port, host or f"127.0.0.1:{port}", args.rate, 1.0)
        lat: dict[str, dict[str, float]] = {}
        for name, values in samples.items():
            lat[name] = {"p50": percentile(values, 0.50), "p99": percentile(values, 0.99)}
            print(f"latency {name} @ {args.rate:.0f} rps: p50 {lat[name]['p50']:.3f} ms, "
                  f"p99 {lat[name]['p99']:.3f} ms ({len(values)} requests)", file=sys.stderr)  # fmt: skip

        while server.requests() < 100_000:
            wrk(server.inbound, 3, None, args.connections)
        served = server.requests()
        rss_after = server.rss_mib()
        rss_after_client = client.rss_mib()

        med = {name: statistics.median(values) for name, values in rps.items()}
        result = {
            "rps_direct": round(med["direct"]),
            "rps_one_hop": round(med["one_hop"]),
            "rps_two_hops": round(med["two_hops"]),
            "rps_bare_gevent_relay": round(med["bare_relay"]),
            "ratio_one_hop_to_direct": round(med["one_hop"] / med["direct"], 3),
            "ratio_one_hop_to_bare_relay": round(med["one_hop"] / med["bare_relay"], 3),
            "ratio_two_hops_to_one_hop": round(med["two_hops"] / med["one_hop"], 3),
            "p50_ms": {k: round(v["p50"], 3) for k, v in lat.items()},
            "p99_ms": {k: round(v["p99"], 3) for k, v in lat.items()},
            "added_p50_ms_per_hop": round(lat["one_hop"]["p50"] - lat["direct"]["p50"], 3),
            "added_p99_ms_per_hop": round(lat["one_hop"]["p99"] - lat["direct"]["p99"], 3),
            "added_p50_ms_per_hop_two_hop_path": round(
                (lat["two_hops"]["p50"] - lat["direct"]["p50"]) / 2, 3
            ),
            "added_p99_ms_per_hop_two_hop_path": round(
                (lat["two_hops"]["p99"] - lat["direct"]["p99"]) / 2, 3
            ),
            "cpu_us_per_request_one_hop": round(cpu_one_hop / max(1, requests_one_hop) * 1e6, 1),
            "rps_per_proxy_core_estimate": round(requests_one_hop / max(cpu_one_hop, 1e-9)),
            "rss_mib_warm": round(rss_warm, 1),
            "rss_mib_after_100k": round(rss_after, 1),
            "rss_mib_client_warm": round(rss_warm_client, 1),
            "rss_mib_client_after": round(rss_after_client, 1),
            "server_proxy_requests": int(served),
            "latency_rate_rps": args.rate,
            "wrk": f"-t1 -c{args.connections} -d{round(args.duration)}s x{args.rounds} (median)",
            "cpus": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        if relay is not None and relay.poll() is None:
            relay.kill()
            relay.wait()
        for proxy in started:
            proxy.stop()
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            nginx.kill()
        if args.profile and started:
            print((tmp / "server-proxy.log").read_text()[:6000], file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
