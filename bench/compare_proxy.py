"""A/B: the proxy of a git revision against the working tree's, under the same load, taking turns.

On a noisy machine only runs taken in turns compare: each round runs the saturated load through
`base` then `head` (then the other order next round), and the report gives every round and the
medians, with each proxy's CPU per request over all its rounds (the figure other load moves
least) and its RSS after them (`<load>_served_<name>`: the requests it served). Loads: `h2`
(`h2load -c 32 -m 10` to nginx over h2c), `h1` (`wrk -t1 -c32` to nginx), `grpc` (a grpcio
unary echo, 32 calls in flight from this process).
Prints one JSON object on its last line.

Usage (from the repository's root): python -m bench.compare_proxy --base REV [--load h2,h1,grpc]
        [--rounds 5] [--duration 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bench_proxy import (
    REPO,
    cpu_seconds,
    grpc_rate,
    h2load,
    rss_mib,
    server_proxy,
    start_grpc_app,
    start_nginx,
    stop_all,
    wrk,
)
from kubectl_mesh.procs import Proc
from tests.support.proxy_process import ProxyProcess

# Runs `python -m proxy` from another tree: the base revision's proxy and kubectl_mesh first on sys.path.
FROM_TREE = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "runpy.run_module('proxy', run_name='__main__', alter_sys=True)"
)


def export(rev: str, tmp: Path) -> Path:
    """The base revision's `proxy/` and `kubectl_mesh/`, unpacked under tmp."""
    target = tmp / "base"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "proxy", "kubectl_mesh"],
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def compare(args: argparse.Namespace, load: str, proxies: dict[str, ProxyProcess]) -> dict[str, Any]:
    def run(proxy: ProxyProcess) -> tuple[float, int]:
        try:
            if load == "h2":
                return h2load(proxy.inbound, args.duration)
            if load == "grpc":
                rate = grpc_rate(f"127.0.0.1:{proxy.inbound}", args.duration)
                return rate, round(rate * args.duration)
            return wrk(proxy.inbound, args.duration)
        except SystemExit:  # a failed request: what the proxy counted, and its log
            print([(s.labels, s.value) for s in proxy.samples("response_total")], file=sys.stderr)
            print(proxy.log()[-3000:], file=sys.stderr)
            raise

    rates: dict[str, list[float]] = {name: [] for name in proxies}
    cpu = dict.fromkeys(proxies, 0.0)
    served = dict.fromkeys(proxies, 0)
    for proxy in proxies.values():
        run(proxy)  # warm-up
    for round_ in range(args.rounds):
        order = list(proxies) if round_ % 2 == 0 else list(reversed(proxies))
        for name in order:
            pid = proxies[name].process.pid
            before = cpu_seconds(pid)
            rate, done = run(proxies[name])
            cpu[name] += cpu_seconds(pid) - before
            served[name] += done
            rates[name].append(rate)
            print(f"{load} round {round_ + 1} {name}: {rate:.0f} rps", file=sys.stderr)
    result: dict[str, Any] = {}
    for name in proxies:
        result[f"{load}_rps_{name}"] = round(statistics.median(rates[name]))
        result[f"{load}_rps_{name}_rounds"] = [round(r) for r in rates[name]]
        result[f"{load}_cpu_us_per_request_{name}"] = round(cpu[name] / max(1, served[name]) * 1e6, 1)
        result[f"{load}_rss_mib_{name}"] = round(rss_mib(proxies[name]), 1)  # after all its rounds
        result[f"{load}_served_{name}"] = served[name]
    result[f"{load}_rps_ratio_head_vs_base"] = round(
        result[f"{load}_rps_head"] / result[f"{load}_rps_base"], 3
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="git revision of the proxy to compare against")
    parser.add_argument("--load", default="h2", help="comma-separated: h2, h1, grpc")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="compare-proxy-"))
    helpers: list[Proc] = []
    started: list[ProxyProcess] = []
    result: dict[str, Any] = {"base": args.base}
    try:
        base_tree = export(args.base, tmp)
        nginx_port, h2_port = start_nginx(tmp, helpers)
        loads = args.load.split(",")
        grpc_port = start_grpc_app(tmp, helpers) if "grpc" in loads else 0
        for load in loads:
            port = {"h2": h2_port, "h1": nginx_port, "grpc": grpc_port}[load]
            base = server_proxy(tmp, port, ["-c", FROM_TREE, str(base_tree)], name=f"base-{load}")
            started.append(base)
            head = server_proxy(tmp, port, name=f"head-{load}")
            started.append(head)
            result.update(compare(args, load, {"base": base, "head": head}))
    finally:
        stop_all(started, helpers, tmp)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
