#!/usr/bin/env python3
"""`make bench-inject`: `kubectl mesh inject` over a large multi-document manifest.

Writes a manifest of --megabytes MB (Deployments, Services, ConfigMaps in turn, --shape export:
as `kubectl get -o yaml` writes them, or dense: short flow mappings, the worst case per byte; see
tests/support/big_manifests.py), runs `kubectl-mesh inject FILE > OUT` in its own process and
reports its wall time, its CPU time (user + system of the process and its workers: on a shared
machine the wall time also counts other processes), the peak RSS of its largest process and the
peak of the summed RSS (and PSS) of the whole process tree: an input this large is done by a pool
of worker processes (kubectl_mesh/commands/transform.py). Goals (issue #12): at least 5 MB/s,
and the tree's peak RSS at most 3× the input. The last line is JSON: input_mb, seconds,
mb_per_s (median run), runs_mb_per_s, cpu_seconds, mb_per_cpu_s, max_rss_mb, tree_rss_mb,
tree_pss_mb, rss_over_input (the tree's RSS), processes, documents, shape, pool, with_libyaml,
load_1min (the machine's load average when it ended: other work on the cores slows the wall time).

Usage: python -m bench.bench_inject [--megabytes 50] [--shape export|dense] [--runs 1] [--pool off|T:C]
       [--reader-delay S]  (stdout read through a pipe, 64 KB every S seconds: a slow consumer; the
       YAML waits in a temporary file until the input is read, so memory should not follow it)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from kubectl_mesh.commands.transform import POOL_ENV
from kubectl_mesh.manifests import WITH_LIBYAML
from tests.support.big_manifests import run_inject, write_manifests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--shape", choices=("export", "dense"), default="export")
    parser.add_argument("--pool", help="$KUBECTL_MESH_INJECT_POOL for the run: off, or THRESHOLD:CHUNK bytes")
    parser.add_argument(
        "--reader-delay", type=float, default=0.0, metavar="S",
        help="read stdout through a pipe, 64 KB at a time, S seconds apart (a slow consumer)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-inject-") as tmp:
        source, output = Path(tmp, "in.yaml"), Path(tmp, "out.yaml")
        documents = write_manifests(source, int(args.megabytes * 1e6), args.shape)
        size = source.stat().st_size
        runs = []
        for i in range(args.runs):
            run = run_inject(source, output, {POOL_ENV: args.pool} if args.pool else None, args.reader_delay)
            if run.returncode != 0:
                print(f"error: inject failed ({run.returncode}): {run.stderr_tail}", file=sys.stderr)
                return 1
            print(
                f"run {i + 1}: {run.seconds:.1f} s ({run.cpu_seconds:.1f} s CPU, {run.processes} processes), "
                f"peak RSS {run.max_rss_bytes / 1e6:.0f} MB, tree {run.tree_rss_bytes / 1e6:.0f} MB",
                file=sys.stderr,
            )
            runs.append(run)
        seconds = statistics.median(r.seconds for r in runs)
        cpu = statistics.median(r.cpu_seconds for r in runs)
        rss = max(r.max_rss_bytes for r in runs)
        tree = max(r.tree_rss_bytes for r in runs)
        result = {
            "input_mb": round(size / 1e6, 1),
            "documents": documents,
            "seconds": round(seconds, 2),
            "mb_per_s": round(size / 1e6 / seconds, 2),
            "runs_mb_per_s": [round(size / 1e6 / r.seconds, 2) for r in runs],
            "cpu_seconds": round(cpu, 2),
            "mb_per_cpu_s": round(size / 1e6 / cpu, 2),
            "shape": args.shape,
            "max_rss_mb": round(rss / 1e6, 1),
            "tree_rss_mb": round(tree / 1e6, 1),
            "tree_pss_mb": round(max(r.tree_pss_bytes for r in runs) / 1e6, 1),
            "rss_over_input": round(tree / size, 2),
            "processes": max(r.processes for r in runs),
            "pool": args.pool or "default",
            "reader_delay_s": args.reader_delay,
            "output_mb": round(runs[-1].output_bytes / 1e6, 1),
            "with_libyaml": WITH_LIBYAML,
            "load_1min": round(os.getloadavg()[0], 2),
            "goals": {"mb_per_s_min": 5, "rss_over_input_max": 3},
        }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
