"""Tap events → what `kubectl mesh tap` prints, and the tap request → the proxy's query. Pure.

The proxy's events (proxy/tap.py) are JSON objects of type `req`, `rsp`, `end` (and `hello`,
`dropped`). Lines follow Linkerd's `viz tap`:

    req id=0:7 proxy=out src=web-5d9f-x dst=voting-svc:8080 tls=false :method=POST
        :authority=voting-svc:8080 :path=/api/vote                          (one line)
    rsp id=0:7 proxy=out src=web-5d9f-x dst=voting-6c8d-y tls=false :status=500 latency=1234µs
    end id=0:7 proxy=out src=web-5d9f-x dst=voting-6c8d-y tls=false duration=1500µs response-length=21B

`id` is `<pod index>:<request number in that pod's stream>`, as Linkerd's `<stream>:<request>`.
`src`/`dst` show the pod of a meshed end (the identity's last part) and the address or authority
of an unmeshed one; `-o wide` adds their namespace and resource (`src_res=deploy/web`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from kubectl_mesh.stat.model import SHORT_NAMES

Event = dict[str, Any]


@dataclass(frozen=True)
class TapOptions:
    """What to show: the proxy-side filters (kubectl mesh tap/top flags, validated)."""

    path: str = ""
    method: str = ""
    authority: str = ""
    to: tuple[str, str, str] | None = None  # (namespace, kind, name)
    max_rps: float = 100.0

    def query(self) -> str:
        """The tap endpoint's query string (proxy/tap.py TapFilter.from_query)."""
        params: dict[str, str] = {"max_rps": f"{self.max_rps:g}"}
        if self.path:
            params["path"] = self.path
        if self.method:
            params["method"] = self.method.upper()
        if self.authority:
            params["authority"] = self.authority
        if self.to is not None:
            params["to"] = "/".join(self.to)
        return urlencode(params)


@dataclass
class Stream:
    """What one tapped pod's stream remembers to print rsp/end lines like their req line."""

    index: int
    pod: str
    requests: dict[int, Event]


def parse_line(line: bytes) -> Event | None:
    """One line of the proxy's stream; None for keep-alive blank lines and anything not an object."""
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _end(identity: str, wide: bool, prefix: str) -> list[str]:
    """`src=web-1` (and in wide form `src_ns=… src_res=deploy/web`) for one end of a request."""
    parts = identity.split("/")
    if len(parts) == 4 and all(parts):
        namespace, kind, name, pod = parts
        fields = [f"{prefix}={pod}"]
        if wide:
            fields += [f"{prefix}_ns={namespace}", f"{prefix}_res={SHORT_NAMES.get(kind, kind)}/{name}"]
        return fields
    return [f"{prefix}={identity or '-'}"]


def format_event(stream: Stream, event: Event, wide: bool = False) -> str | None:
    """The line for one event (None for events that print nothing, e.g. `hello`)."""
    kind = event.get("type")
    if kind == "dropped":
        count = event.get("count", 0)
        return f"# {stream.pod}: {count} events dropped (the tap could not keep up; lower --max-rps)"
    if kind not in ("req", "rsp", "end"):
        return None
    number = int(event.get("id", 0))
    if kind == "req":
        stream.requests[number] = event
    req = stream.requests.get(number, {})
    if kind == "rsp" and event.get("dst") and req:
        req["dst"] = event["dst"]  # the callee's identity, known from the response: end says it too
    if kind == "end":
        stream.requests.pop(number, None)
    dst = event.get("dst") or req.get("dst", "")
    head = [kind, f"id={stream.index}:{number}", f"proxy={req.get('proxy', '-')}"]
    head += [*_end(str(req.get("src", "")), wide, "src"), *_end(str(dst), wide, "dst"), "tls=false"]
    if kind == "req":
        tail = [
            f":method={event.get('method')}",
            f":authority={event.get('authority')}",
            f":path={event.get('path')}",
        ]
    elif kind == "rsp":
        tail = [f":status={event.get('status')}", f"latency={event.get('latency_us')}µs"]
        if event.get("grpc_status") is not None:
            tail.insert(1, f"grpc-status={event['grpc_status']}")
    else:
        tail = [f"duration={event.get('duration_us')}µs", f"response-length={event.get('response_bytes')}B"]
        if event.get("grpc_status") is not None:
            tail.append(f"grpc-status={event['grpc_status']}")
        if event.get("error"):
            tail.append(f"error={event['error']}")
    return " ".join(head + tail)


def json_event(stream: Stream, event: Event) -> str | None:
    """`-o json`: the proxy's event with the pod it came from; None for `hello`."""
    if event.get("type") == "hello":
        return None
    if "id" in event:
        event = {**event, "id": f"{stream.index}:{event['id']}"}
    return json.dumps({"pod": stream.pod, **event})
