"""`kubectl mesh top`: the tap stream folded into the busiest routes. Pure: events in, rows out.

A row is one (source, destination, method, path): how many requests ended, the best, worst and
last latency to the response head, and the share that succeeded (a status below 500, no error
but the client's own leaving, and a gRPC status of 0 when there is one: the same rule as the
metrics). Ends are named by their
workload (`web`, from the identity) when meshed, by their address or authority when not.
Sorted by count, then by the route.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from kubectl_mesh.stat.render import fmt_success
from kubectl_mesh.tap.events import Event, Stream

HEADERS = ("SRC", "DST", "METHOD", "PATH", "COUNT", "BEST", "WORST", "LAST", "SUCCESS")
MAX_ROUTES = 10_000  # rows kept; the least recent go first beyond that (memory stays bounded)


def workload_of(identity: str) -> str:
    parts = identity.split("/")
    return parts[2] if len(parts) == 4 and all(parts) else identity or "-"


@dataclass
class Route:
    src: str
    dst: str
    method: str
    path: str
    count: int = 0
    ok: int = 0
    best_us: int | None = None
    worst_us: int | None = None
    last_us: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "src": self.src, "dst": self.dst, "method": self.method, "path": self.path, "count": self.count,
            "success": self.ok / self.count if self.count else None,
            "best_us": self.best_us, "worst_us": self.worst_us, "last_us": self.last_us,
        }  # fmt: skip


@dataclass
class _Open:
    req: Event
    dst: str
    latency_us: int | None = None
    failed: bool = False


@dataclass
class Top:
    routes: dict[tuple[str, str, str, str], Route] = field(default_factory=dict)
    _open: dict[tuple[int, int], _Open] = field(default_factory=dict)

    def add(self, stream: Stream, event: Event) -> None:
        kind, key = event.get("type"), (stream.index, int(event.get("id", 0)))
        if kind == "req":
            self._open[key] = _Open(event, str(event.get("dst", "")))
            if len(self._open) > MAX_ROUTES:  # requests whose end never came: forget the oldest
                self._open.pop(next(iter(self._open)))
            return
        pending = self._open.get(key)
        if pending is None:
            return
        if kind == "rsp":
            pending.dst = str(event.get("dst") or pending.dst)
            pending.latency_us = event.get("latency_us")
            status = int(event.get("status") or 0)
            pending.failed = status >= 500 or event.get("grpc_status") not in (None, 0)
            return
        if kind != "end":
            return
        del self._open[key]
        req = pending.req
        route_key = (workload_of(str(req.get("src", ""))), workload_of(pending.dst),
                     str(req.get("method", "")), str(req.get("path", "")))  # fmt: skip
        route = self.routes.pop(route_key, None) or Route(*route_key)
        self.routes[route_key] = route  # most recent last: eviction takes the first
        if len(self.routes) > MAX_ROUTES:
            self.routes.pop(next(iter(self.routes)))
        error = str(event.get("error") or "")
        # A client that left or stalled (`client_*`) fails only itself: judged by the status alone.
        failed = pending.failed or (bool(error) and not error.startswith("client_"))
        failed = failed or event.get("grpc_status") not in (None, 0)
        route.count += 1
        route.ok += not failed
        latency = pending.latency_us
        if latency is not None:
            route.last_us = latency
            route.best_us = latency if route.best_us is None else min(route.best_us, latency)
            route.worst_us = latency if route.worst_us is None else max(route.worst_us, latency)

    def rows(self) -> list[Route]:
        return sorted(self.routes.values(), key=lambda r: (-r.count, r.src, r.dst, r.method, r.path))


def _ms(us: int | None) -> str:
    return "-" if us is None else f"{us / 1000:.1f}ms"


def render_top(rows: list[Route], output: str = "table", limit: int = 0) -> str:
    if output == "json":
        return json.dumps([r.to_dict() for r in rows], indent=2)
    import tabulate as tabulate_module

    tabulate_module.MIN_PADDING = 0
    shown = rows[:limit] if limit else rows
    body = [
        [r.src, r.dst, r.method, r.path, str(r.count), _ms(r.best_us), _ms(r.worst_us), _ms(r.last_us),
         fmt_success(r.ok / r.count if r.count else None)]
        for r in shown
    ]  # fmt: skip
    colalign = ["left"] * 4 + ["right"] * 5
    return str(
        tabulate_module.tabulate(body, headers=list(HEADERS), tablefmt="plain", colalign=colalign,
                                 disable_numparse=True)
    )  # fmt: skip
