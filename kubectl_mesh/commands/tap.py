"""`kubectl mesh tap`: live requests of a workload's pods, through pods/portforward."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from kubectl_mesh.flags import add_command, add_kube_flags, add_output_flag, kube_options

if TYPE_CHECKING:
    from kubectl_mesh.tap.stream import TapSession

EXAMPLES = """
  # Every request in and out of web's pods, live (Ctrl-C stops)
  kubectl mesh tap deploy/web -n emojivoto

  # Only web's calls to voting, at most 10 requests per second per pod
  kubectl mesh tap deploy/web -n emojivoto --to deploy/voting --max-rps 10

  # Only POSTs under /api, with each end's namespace and workload, or as JSON lines
  kubectl mesh tap deploy/web -n emojivoto --method POST --path /api -o wide
  kubectl mesh tap po/web-5d9f7c6b8-x2k4q -n emojivoto -o json
"""

DESCRIPTION = """\
Stream the requests that a workload's proxies see, as they happen: one `req` line when a request
starts, `rsp` at its response head (status, latency), `end` when it is done (duration, size).
Every running meshed pod of the workload is tapped at once and the streams are merged.

Tapping goes through the API server's port-forward to each pod (the proxy serves its tap on the
pod's loopback only): it needs `create` on pods/portforward, as `kubectl port-forward` does.
Filters run in the proxies: --to, --path (a prefix), --method, --authority, and --max-rps per pod
(default 100; what a proxy cannot send in time is dropped and counted)."""

TAP_OUTPUTS = ("line", "wide", "json")


def add_tap_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "resource", nargs="+", metavar="RESOURCE", help="TYPE/NAME | TYPE NAME | NAME (a deployment)"
    )
    parser.add_argument("--to", metavar="TYPE/NAME", help="only requests to this workload")
    parser.add_argument("--to-namespace", metavar="NS", help="namespace of --to (default: -n's)")
    parser.add_argument("--path", default="", metavar="PREFIX", help="only paths starting with PREFIX")
    parser.add_argument("--method", default="", metavar="M", help="only this HTTP method")
    parser.add_argument("--authority", default="", metavar="A", help="only this :authority (Host)")
    parser.add_argument(
        "--max-rps", default="100", metavar="N", help="at most N requests per second per pod (default 100)"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="tap the local `kubectl mesh demo` running on this machine (no cluster)",
    )
    add_kube_flags(parser, namespace=True)


def register(sub: Any) -> None:
    parser = add_command(
        sub, "tap", help="live requests of a workload", description=DESCRIPTION, examples=EXAMPLES
    )
    add_tap_flags(parser)
    add_output_flag(parser, TAP_OUTPUTS)
    parser.set_defaults(func=run)


def open_session(args: argparse.Namespace) -> TapSession:
    """Flags → the pods to tap and their streams (validated first; one-line errors)."""
    from kubectl_mesh import kube
    from kubectl_mesh.contract import PROXY_TAP_PORT
    from kubectl_mesh.stat import StatInputError, build_request
    from kubectl_mesh.stat.model import check_name, parse_ref
    from kubectl_mesh.tap.events import TapOptions
    from kubectl_mesh.tap.stream import TapSession, pods_to_tap, port_forward_opener

    try:
        max_rps = float(args.max_rps)
    except ValueError:
        max_rps = 0.0
    if not 0 < max_rps <= 10_000:  # checked before a demo or cluster is looked for
        raise StatInputError(f'--max-rps must be a number above 0 and at most 10000, got "{args.max_rps}"')
    options = kube_options(args)
    if args.demo:
        from kubectl_mesh.demo.state import read_state

        demo = read_state()
        namespace, given = args.namespace or demo.namespace, args.namespace is not None
    else:
        namespace, given = kube.resolve_namespace(options)
    words = args.resource
    if len(words) == 1 and "/" not in words[0]:
        words = ["deployment", words[0]]
    target = build_request(resources=words, namespace=namespace, namespace_given=given)
    if len(target.names) != 1 or target.kind in ("namespace", "all"):
        raise StatInputError(f"{args.command} takes one workload: TYPE/NAME, e.g. deploy/web")
    to = None
    if args.to:
        to_kind, to_name = parse_ref(args.to, "--to")
        if to_kind in ("namespace", "all"):
            raise StatInputError("--to takes a workload: TYPE/NAME, e.g. deploy/voting")
        to = (check_name(args.to_namespace or namespace), to_kind, to_name)
    elif args.to_namespace:
        raise StatInputError("--to-namespace needs --to")
    tap_options = TapOptions(
        path=args.path, method=args.method, authority=args.authority, to=to, max_rps=max_rps
    )
    if args.demo:
        return _demo_session(demo, target.kind, target.names[0], namespace, tap_options)
    client = kube.connect(options)
    targets = pods_to_tap(client.get_json, target.kind, target.names[0], namespace)
    return TapSession(targets, port_forward_opener(client, PROXY_TAP_PORT), tap_options)


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh.tap.events import format_event, json_event

    session = open_session(args)
    errors = []
    try:
        for stream, event, error in session.events():
            if stream is None or event is None:
                if error:
                    errors.append(error)
                    print(f"error: {error}", file=sys.stderr)
                continue
            line = (
                json_event(stream, event)
                if args.output == "json"
                else format_event(stream, event, args.output == "wide")
            )
            if line is not None:
                print(line, flush=True)
    except KeyboardInterrupt:  # Ctrl-C is how a tap ends: stop every stream, exit quietly
        return 0
    finally:
        session.close()
    return 1 if errors and len(errors) == len(session.targets) else 0


def _demo_session(demo: Any, kind: str, name: str, namespace: str, options: Any) -> TapSession:
    """The demo's pods, tapped straight on 127.0.0.1 (its one namespace, one pod per deployment)."""
    from kubectl_mesh.errors import MeshError
    from kubectl_mesh.tap.stream import TapSession, TapTarget, direct_opener

    pods = {d: pod for d, (pod, _) in demo.taps.items()}
    chosen = [
        d
        for d, pod in pods.items()
        if (kind == "deployment" and d == name) or (kind == "pod" and pod == name)
    ]
    if namespace != demo.namespace or kind not in ("deployment", "pod") or not chosen:
        raise MeshError(
            f'{kind} "{name}" in namespace "{namespace}" is not in the demo',
            f"the demo runs deployments {', '.join(sorted(pods))} in namespace {demo.namespace}",
        )
    addresses = {demo.taps[d][0]: ("127.0.0.1", demo.taps[d][1]) for d in chosen}
    return TapSession(
        [TapTarget(namespace, demo.taps[d][0]) for d in chosen], direct_opener(addresses), options
    )
