"""`kubectl mesh top`: the busiest routes of a workload, live, from its proxies' tap streams."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from kubectl_mesh.commands.tap import add_tap_flags, open_session
from kubectl_mesh.flags import add_command, add_output_flag

EXAMPLES = """
  # The busiest routes through web's pods, redrawn every second (Ctrl-C stops)
  kubectl mesh top deploy/web -n emojivoto

  # Only its calls to voting; a table every 5 s when the output is not a terminal
  kubectl mesh top deploy/web -n emojivoto --to deploy/voting --interval 5 > top.log

  # JSON rows every interval
  kubectl mesh top deploy/web -n emojivoto -o json
"""

DESCRIPTION = """\
Fold the tap stream of a workload's pods into routes (source, destination, method, path) with
their request count, best, worst and last latency to the response head, and success rate, sorted
by count. On a terminal the table is redrawn in place, like top; otherwise it is printed every
--interval. Tapping needs `create` on pods/portforward (see `kubectl mesh tap --help`)."""


def register(sub: Any) -> None:
    parser = add_command(sub, "top", help="busiest routes of a workload, live", description=DESCRIPTION,
                         examples=EXAMPLES)  # fmt: skip
    add_tap_flags(parser)
    parser.add_argument(
        "--interval", type=float, default=None, metavar="SECONDS",
        help="redraw every SECONDS (default: 1 on a terminal, 2 otherwise)",
    )  # fmt: skip
    parser.add_argument(
        "--routes", type=int, default=0, metavar="N", help="show the N busiest routes (default: all)"
    )
    add_output_flag(parser, ("table", "json"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubectl_mesh.errors import MeshError
    from kubectl_mesh.tap.top import Top, render_top

    terminal = sys.stdout.isatty() and args.output == "table"
    interval = args.interval if args.interval is not None else (1.0 if terminal else 2.0)
    if not 0.2 <= interval <= 3600:
        raise MeshError("--interval must be between 0.2 and 3600 seconds")
    if args.routes < 0:
        raise MeshError("--routes must not be negative")
    session = open_session(args)
    top = Top()
    next_draw = time.monotonic() + interval
    failures = 0

    def draw() -> None:
        text = render_top(top.rows(), args.output, args.routes)
        if terminal:
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")  # home, clear: redrawn in place
        else:
            sys.stdout.write(text + "\n\n")
        sys.stdout.flush()

    try:
        for stream, event, error in session.events(tick=interval):
            if stream is not None and event is not None:
                top.add(stream, event)
            elif error:
                failures += 1
                print(f"error: {error}", file=sys.stderr)
            if time.monotonic() >= next_draw:
                draw()
                next_draw = time.monotonic() + interval
    except KeyboardInterrupt:
        return 0
    finally:
        session.close()
    draw()
    return 1 if failures == len(session.targets) else 0
