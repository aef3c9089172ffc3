#!/usr/bin/env python3
"""`make bench-cli`: `kubectl mesh stat deploy -n NS` next to `kubectl get deploy -n NS`.

Against the lab (started here, or the running one joined and left running): a namespace with
100 Deployments (replicas 0: their pods need not run), and a Prometheus — the mesh's own
through the API server's service proxy when the chart is installed, else the lab's Prometheus
(`--prometheus-url`), else one started here on loopback. Each command is timed from process
start to exit, alternating, after warm-up runs; all in one run on the same machine.

`stat` is timed as users run it, through kubectl's plugin discovery (`kubectl mesh stat …`,
which adds kubectl's own start), and as `kubectl-mesh stat …` directly.
The last line is JSON: stat_median_s, kubectl_get_median_s, ratio (target <= 3), and more.

Usage: python -m bench.bench_cli [--runs 15] [--deployments 100] (from the checkout; `make bench-cli`)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kubectl_mesh.contract import CONTROL_PLANE_NAMESPACE, PROMETHEUS_SERVICE
from kubectl_mesh.procs import Prometheus, StartError, start_prometheus
from lab import cluster
from lab.config import KUBECONFIG, bin_dir, missing_binaries

KUBECTL = "/usr/bin/kubectl"
VENV_BIN = Path(sys.executable).parent


def deployments(namespace: str, count: int) -> str:
    items = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"app-{i:03d}", "namespace": namespace, "labels": {"app": f"app-{i:03d}"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": f"app-{i:03d}"}},
                "template": {
                    "metadata": {"labels": {"app": f"app-{i:03d}"}},
                    "spec": {"containers": [{"name": "app", "image": "app:1", "command": ["sleep", "3600"]}]},
                },
            },
        }
        for i in range(count)
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"bench: `{' '.join(cmd)}` failed: {done.stderr.strip()}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--deployments", type=int, default=100)
    args = parser.parse_args(argv)

    started = cluster.running() is None
    print(f"bench-cli: {'starting' if started else 'joining'} the lab…", file=sys.stderr)
    lab_prometheus = "prometheus" not in missing_binaries(bin_dir())
    try:
        state = cluster.up(owner="bench-cli", user=os.getpid(), prometheus=lab_prometheus)
    except cluster.LabError as exc:
        raise SystemExit(f"bench-cli: the lab did not start: {exc}") from None
    env = dict(os.environ, KUBECONFIG=str(KUBECONFIG))
    env["PATH"] = f"{VENV_BIN}:{state.bin_dir or bin_dir()}:/usr/bin:/bin"
    env.pop("MESH_PROMETHEUS_URL", None)
    namespace = f"bench-cli-{uuid.uuid4().hex[:6]}"
    local_prometheus: Prometheus | None = None
    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    try:
        subprocess.run([KUBECTL, "create", "namespace", namespace], env=env, check=True, capture_output=True)
        subprocess.run(
            [KUBECTL, "apply", "-f", "-"],
            input=deployments(namespace, args.deployments),
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        has_mesh_prometheus = (
            subprocess.run(
                [KUBECTL, "-n", CONTROL_PLANE_NAMESPACE, "get", "service", PROMETHEUS_SERVICE],
                env=env,
                capture_output=True,
            ).returncode
            == 0
        )
        prom_flags: list[str] = []
        if has_mesh_prometheus:
            prometheus = "mesh-system service proxy"
        elif state.prometheus_url:
            prometheus = state.prometheus_url
            prom_flags = ["--prometheus-url", state.prometheus_url]
        else:
            config = {"global": {"scrape_interval": "10s"}, "scrape_configs": []}
            try:
                local_prometheus = start_prometheus(config, tmp)
            except StartError as exc:
                raise SystemExit(f"bench: {exc}") from None
            prometheus = f"{local_prometheus.url} (started here)"
            prom_flags = ["--prometheus-url", local_prometheus.url]

        stat_via_kubectl = [KUBECTL, "mesh", "stat", "deploy", "-n", namespace, "--unmeshed", *prom_flags]
        stat_direct = [str(VENV_BIN / "kubectl-mesh"), *stat_via_kubectl[2:]]
        get = [KUBECTL, "get", "deploy", "-n", namespace]
        rows = subprocess.run(stat_via_kubectl, env=env, capture_output=True, text=True, timeout=60)
        if rows.returncode != 0:
            raise SystemExit(f"bench: kubectl mesh stat failed: {rows.stderr.strip()}")
        row_count = len(rows.stdout.splitlines()) - 1
        for _ in range(2):  # warm-up: page cache, API server caches, Prometheus
            for cmd in (stat_via_kubectl, stat_direct, get):
                timed(cmd, env)
        times: dict[str, list[float]] = {"stat": [], "direct": [], "get": []}
        for _ in range(args.runs):
            times["stat"].append(timed(stat_via_kubectl, env))
            times["direct"].append(timed(stat_direct, env))
            times["get"].append(timed(get, env))
    finally:
        subprocess.run(
            [KUBECTL, "delete", "namespace", namespace, "--wait=false"], env=env, capture_output=True
        )
        if local_prometheus is not None:
            local_prometheus.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if cluster.release(os.getpid(), "bench-cli"):
            print("bench-cli: lab stopped", file=sys.stderr)

    stat_median = statistics.median(times["stat"])
    get_median = statistics.median(times["get"])
    result = {
        "bench": "cli",
        "deployments": args.deployments,
        "rows": row_count,
        "runs": args.runs,
        "prometheus": prometheus,
        "stat_median_s": round(stat_median, 4),
        "stat_direct_median_s": round(statistics.median(times["direct"]), 4),
        "kubectl_get_median_s": round(get_median, 4),
        "ratio": round(stat_median / get_median, 2),
        "ratio_direct": round(statistics.median(times["direct"]) / get_median, 2),
        "target_ratio": 3,
    }
    print(
        f"kubectl mesh stat deploy ({row_count} rows): median {stat_median * 1000:.0f} ms "
        f"(direct {result['stat_direct_median_s'] * 1000:.0f} ms); "
        f"kubectl get deploy: {get_median * 1000:.0f} ms"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
