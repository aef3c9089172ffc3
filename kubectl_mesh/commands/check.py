"""`kubectl mesh check [--pre]`: is the cluster ready for the mesh / is the mesh healthy?

The checks and the framework that runs them are kubectl_mesh.health; this module turns the flags
into a health.Context, and renders: one line per check, ✔ or ✖, with a hint that says what to
run when it fails. `--wait` retries failing checks until they pass or the time is up, with a
progress indicator on stderr. `-o json` prints {"success": …, "checks": [{name, ok, detail, hint}]}.
Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kubectl_mesh import __version__
from kubectl_mesh.flags import add_command, add_kube_flags, add_output_flag, add_prometheus_flag, kube_options

OK_MARK, FAIL_MARK = "✔", "✖"

EXAMPLES = """
  # Before installing: can this cluster and this user run the mesh?
  kubectl mesh check --pre

  # After installing: is every part healthy?
  kubectl mesh check

  # Wait up to 5 minutes for the control plane to come up (e.g. right after install)
  kubectl mesh check --wait 5m

  # Machine-readable
  kubectl mesh check -o json
"""


class Progress:
    """A spinner on a terminal; one line per waited check otherwise (logs stay readable)."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.frame = 0
        self.announced: set[str] = set()

    def waiting(self, name: str, detail: str, elapsed: float) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.frame = (self.frame + 1) % len(self.FRAMES)
            sys.stderr.write(
                f"\r\x1b[K{self.FRAMES[self.frame]} waiting for: {name} ({elapsed:.0f}s) — {detail}"[:200]
            )
            sys.stderr.flush()
        elif name not in self.announced:
            self.announced.add(name)
            print(f"… waiting for: {name} ({detail})", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "check",
        help="check the cluster (--pre) or the installed mesh",
        description=(
            "Check that the cluster can run the mesh (--pre), or that the installed mesh is healthy:\n"
            "the API server, versions, the webhook and its certificate, Prometheus and the proxies."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument("--pre", action="store_true", help="checks before installing the mesh")
    parser.add_argument(
        "--wait",
        metavar="DURATION",
        nargs="?",
        const="5m",
        default=None,
        help="retry failing checks for up to DURATION (default when given: 5m)",
    )
    add_kube_flags(parser)
    add_output_flag(parser, ("table", "json"))
    add_prometheus_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh import health
    from kubectl_mesh.errors import MeshError
    from kubectl_mesh.stat.model import StatInputError, duration_seconds

    wait_s = 0.0
    if args.wait:
        try:
            wait_s = duration_seconds(args.wait)
        except StatInputError as exc:
            raise MeshError(f"--wait: {exc.message}") from None
    checks = health.PRE_CHECKS if args.pre else health.CHECKS
    as_json = args.output == "json"

    def emit(result: health.Result) -> None:
        if as_json:
            return
        mark = OK_MARK if result.ok else FAIL_MARK
        line = f"{mark} {result.name}"
        if result.detail:
            line += f": {result.detail}"
        print(line, flush=True)
        if not result.ok and result.hint:
            print(f"    hint: {result.hint}", flush=True)

    progress = Progress(enabled=wait_s > 0)
    context = health.Context(kube=kube_options(args), prometheus_url=args.prometheus_url)
    results = health.run_checks(
        context, checks, wait_s, emit, waiting=progress.waiting, done_waiting=progress.done
    )
    success = len(results) == len(checks) and all(r.ok for r in results)
    if as_json:
        payload = {
            "success": success,
            "client_version": f"v{__version__}",
            "checks": [r.__dict__ for r in results],
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        skipped = len(checks) - len(results)
        if skipped:
            print(f"({skipped} later checks skipped)")
        print(f"\nStatus check results are {OK_MARK if success else FAIL_MARK}")
    return 0 if success else 1
