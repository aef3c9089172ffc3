"""emojivoto in Python: four small services whose traffic the mesh has to explain.

The shape of the original (github.com/BuoyantIO/emojivoto), gRPC between the services as there:

    vote-bot ──GET /api/list, /api/vote?choice=──▶ web ──gRPC EmojiService/ListAll, FindByShortcode──▶ emoji
                                                       ──gRPC VotingService/Vote<Emoji>, Results──▶ voting

The .proto files are examples/emojivoto/proto/ (after the original's, same package and methods);
the modules generated from them are checked in (kubectl_mesh/demo/emojivoto_proto/). `web` serves
HTTP/1.1 to the bot and a browser, and calls the two services over gRPC (grpcio).

Voting for FAILING_EMOJI (`:doughnut:`) always fails with gRPC status UNKNOWN, as the original's
VoteDoughnut does (it returns a plain Go error, which grpc-go sends as UNKNOWN), so `web` answers
some votes with a 500 and the mesh has to point at `voting`. The bot picks the failing emoji a
fixed share of its votes, spread evenly (not at random), so any window of traffic has the same
success rate and tests need no luck.

Every service counts what it received and sent, by itself (`GET /counters` on COUNTERS_PORT, a
port the mesh leaves alone): per path (an HTTP path, or a gRPC method `/package.Service/Method`),
the total, the failures and each status (HTTP code, or gRPC status name), so tests can compare
the mesh's numbers with the truth. `GET /counters?at=<Unix time>` answers them as they were at
that instant (the last 10 minutes): a test reads them at the instants Prometheus scraped the
proxies, so both sides count the same calls.

Needs `grpcio` and `protobuf` (the package's `demo` extra, `pip install 'kubectl-mesh[demo]'`;
the image installs them).
Run: `python3 -m kubectl_mesh.demo.emojivoto web|emoji|voting|vote-bot`. Settings come from the
environment (names as in the original where it has them):

| variable | services | default | meaning |
| --- | --- | --- | --- |
| `BIND` | all | `0.0.0.0` | address to listen on |
| `PORT` | web, emoji, voting | `8080` | the service's port: HTTP/1.1 (web), gRPC (emoji, voting) |
| `COUNTERS_PORT` | all | `8801` | `/counters` (JSON) and `/healthz`; `0` turns it off |
| `EMOJISVC_HOST`, `VOTINGSVC_HOST` | web | `emoji-svc:8080`, `voting-svc:8080` | gRPC upstreams |
| `WEB_HOST` | vote-bot | `web-svc:80` | where the bot sends its traffic |
| `REQUEST_RATE` | vote-bot | `1` | loops per second, each one list and one vote |
| `FAILURE_SHARE` | vote-bot | `0.15` | share of votes for the failing emoji |
| `FAILING_EMOJI` | voting, vote-bot | `:doughnut:` | the emoji whose vote always fails |
| `MAX_SECONDS` | vote-bot | `0` | stop voting after this long (`0`: never) |
| `UPSTREAM_TIMEOUT` | web, vote-bot | `5` | seconds per upstream request or call |
| `http_proxy`, `no_proxy` | vote-bot | | honoured, for the mesh's explicit mode |
| `grpc_proxy` (or `http_proxy`), `no_grpc_proxy` | web | | honoured by grpcio (a CONNECT tunnel), the same |
| `GRPC_DNS_RESOLVER` | web | grpcio's | `native` resolves with getaddrinfo (/etc/hosts), as the lab needs |
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import random
import socket
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any, ClassVar, TypeAlias
from urllib.parse import parse_qs, quote, urlsplit

import grpc

from kubectl_mesh.demo.emojivoto_proto import Emoji_pb2, Voting_pb2
from kubectl_mesh.demo.lifecycle import stop_on_signals, wait_then_shutdown

SERVICES = ("web", "emoji", "voting", "vote-bot")
DEFAULT_FAILING_EMOJI = ":doughnut:"
MAX_BODY = 64 * 1024  # requests here are tiny; anything bigger is refused

# (shortcode, code points): a subset of the original's list, the doughnut included.
_EMOJI_CODEPOINTS: tuple[tuple[str, tuple[int, ...]], ...] = (
    (":joy:", (0x1F602,)),
    (":sunglasses:", (0x1F60E,)),
    (":doughnut:", (0x1F369,)),
    (":stuck_out_tongue_winking_eye:", (0x1F61C,)),
    (":money_mouth_face:", (0x1F911,)),
    (":flushed:", (0x1F633,)),
    (":mask:", (0x1F637,)),
    (":nerd_face:", (0x1F913,)),
    (":ghost:", (0x1F47B,)),
    (":skull_and_crossbones:", (0x2620, 0xFE0F)),
    (":heart_eyes_cat:", (0x1F63B,)),
    (":hear_no_evil:", (0x1F649,)),
    (":see_no_evil:", (0x1F648,)),
    (":speak_no_evil:", (0x1F64A,)),
    (":santa:", (0x1F385,)),
    (":turkey:", (0x1F983,)),
    (":rabbit:", (0x1F430,)),
    (":dog:", (0x1F436,)),
    (":pig:", (0x1F437,)),
    (":snail:", (0x1F40C,)),
    (":bacon:", (0x1F953,)),
    (":pizza:", (0x1F355,)),
    (":taco:", (0x1F32E,)),
    (":burrito:", (0x1F32F,)),
    (":ramen:", (0x1F35C,)),
    (":champagne:", (0x1F37E,)),
    (":beer:", (0x1F37A,)),
    (":rainbow:", (0x1F308,)),
    (":rocket:", (0x1F680,)),
    (":fire:", (0x1F525,)),
    (":jack_o_lantern:", (0x1F383,)),
    (":balloon:", (0x1F388,)),
    (":tada:", (0x1F389,)),
    (":trophy:", (0x1F3C6,)),
    (":bulb:", (0x1F4A1,)),
    (":crystal_ball:", (0x1F52E,)),
    (":100:", (0x1F4AF,)),
    (":checkered_flag:", (0x1F3C1,)),
    (":thumbsup:", (0x1F44D,)),
    (":wave:", (0x1F44B,)),
    (":clap:", (0x1F44F,)),
    (":pray:", (0x1F64F,)),
    (":metal:", (0x1F918,)),
    (":floppy_disk:", (0x1F4BE,)),
)
EMOJI: dict[str, str] = {code: "".join(map(chr, points)) for code, points in _EMOJI_CODEPOINTS}


# --- Counting, the services' own truth -----------------------------------------------------


Status: TypeAlias = "int | grpc.StatusCode | None"  # an HTTP status, a gRPC status, or no response at all


def is_failure(status: Status) -> bool:
    """The mesh's rule: a 5xx, a gRPC status other than OK, or no response at all is a failure."""
    if isinstance(status, grpc.StatusCode):
        return status is not grpc.StatusCode.OK
    return status is None or status >= 500


def status_name(status: Status) -> str:
    """How a status shows in /counters: `200`, `UNKNOWN`, `none` (no response)."""
    if isinstance(status, grpc.StatusCode):
        return str(status.name)
    return "none" if status is None else str(status)


@dataclass
class _Path:
    total: int = 0
    failures: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass
class _Tally:
    total: int = 0
    failures: int = 0
    paths: dict[str, _Path] = field(default_factory=dict)  # HTTP path or gRPC method -> counts

    def add(self, path: str, status: Status, by: int = 1) -> None:
        """Count one call (`by` -1 takes one back: the counters as they were before it)."""
        failed = is_failure(status)
        self.total += by
        self.failures += by * failed
        entry = self.paths.setdefault(path, _Path())
        entry.total += by
        entry.failures += by * failed
        name = status_name(status)
        entry.statuses[name] = entry.statuses.get(name, 0) + by
        if not entry.statuses[name]:
            del entry.statuses[name]
        if not entry.total:
            del self.paths[path]

    def copy(self) -> _Tally:
        paths = {p: _Path(e.total, e.failures, dict(e.statuses)) for p, e in self.paths.items()}
        return _Tally(self.total, self.failures, paths)

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "failures": self.failures,
            "paths": {
                p: {"total": e.total, "failures": e.failures, "statuses": dict(sorted(e.statuses.items()))}
                for p, e in sorted(self.paths.items())
            },
        }


HISTORY_SECONDS = 600.0  # how far back `/counters?at=` can look (a stat window is a minute)
HISTORY_EVENTS = 50_000  # and at most this many calls back, whatever the rate (a few MB)


class Counters:
    """Requests and calls a service received and sent, by status, counted by the service itself.

    Each call is also kept with the time it was counted (HISTORY_SECONDS, HISTORY_EVENTS), so that
    `snapshot_at(T)` gives the counters as they were at T: a test reads them at the instants
    Prometheus scraped the proxies, and compares the same calls the mesh counted, not a window
    shifted by a few calls.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self.started = time.time()
        self._lock = threading.Lock()
        self._received = _Tally()
        self._sent: dict[str, _Tally] = {}
        self.extra: dict[str, int] = {}
        # (time, upstream or None for received, path, status), or (time, "+", extra name, by)
        self._history: deque[tuple[float, str | None, str, Any]] = deque()
        self._forgotten = 0.0  # the time of the latest call no longer in the history

    def _remember(self, event: tuple[float, str | None, str, Any]) -> None:
        history = self._history
        history.append(event)
        while history and (len(history) > HISTORY_EVENTS or history[0][0] < event[0] - HISTORY_SECONDS):
            self._forgotten = history.popleft()[0]

    def count_received(self, path: str, status: Status) -> None:
        with self._lock:
            self._received.add(path, status)
            self._remember((time.time(), None, path, status))

    def count_sent(self, upstream: str, path: str, status: Status) -> None:
        with self._lock:
            self._sent.setdefault(upstream, _Tally()).add(path, status)
            self._remember((time.time(), upstream, path, status))

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            self.extra[name] = self.extra.get(name, 0) + by
            self._remember((time.time(), "+", name, by))

    def snapshot(self) -> dict[str, Any]:
        """The counters now."""
        snap = self.snapshot_at(None)
        assert snap is not None
        return snap

    def snapshot_at(self, at: float | None) -> dict[str, Any] | None:
        """The counters as they were at the Unix time `at` (now: None); None beyond the history."""
        with self._lock:
            now = time.time()
            received, extra = self._received.copy(), dict(self.extra)
            sent = {name: tally.copy() for name, tally in self._sent.items()}
            if at is not None and at < now:
                if at < self._forgotten:
                    return None
                for when, upstream, path, status in reversed(self._history):
                    if when <= at:
                        break
                    if upstream == "+":
                        extra[path] -= status
                    elif upstream is None:
                        received.add(path, status, by=-1)
                    else:
                        sent[upstream].add(path, status, by=-1)
                now = at
        return {
            "service": self.service,
            "pid": os.getpid(),
            "started": self.started,
            "time": now,
            "received": received.as_json(),
            "sent": {name: tally.as_json() for name, tally in sorted(sent.items()) if tally.total},
            **{name: n for name, n in sorted(extra.items()) if n},
        }


# --- HTTP server side -----------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, payload: object) -> Response:
        return cls(status, json.dumps(payload, ensure_ascii=False).encode() + b"\n")


Query = Mapping[str, list[str]]
Route = Callable[[Query], Response]


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; every request is answered, none can take the server down."""

    protocol_version = "HTTP/1.1"
    server_version = "emojivoto"
    routes: ClassVar[dict[tuple[str, str], Route]] = {}  # (method, path) -> handler; set per server
    counters: ClassVar[Counters | None] = None  # None: do not count (the counters endpoint itself)

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without NODELAY, Nagle's algorithm and the
        # peer's delayed ACK would add ~40 ms to every response.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        known = any(path == url.path for _, path in self.routes)
        response = self._read_body()
        if response is None:
            route = self.routes.get(("GET" if method == "HEAD" else method, url.path))
            if route is None:
                response = Response.json(405 if known else 404, {"error": "no such route"})
            else:
                try:
                    response = route(parse_qs(url.query))
                except Exception as exc:  # a bug must cost one request, not the server
                    self.log_error("%s %s failed: %s: %s", method, url.path, type(exc).__name__, exc)
                    response = Response.json(500, {"error": type(exc).__name__})
        if self.counters is not None:
            self.counters.count_received(url.path if known else "(other)", response.status)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(response.body)

    def _read_body(self) -> Response | None:
        """Consume the request body so the connection stays usable; refuse what we do not expect."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return Response.json(411, {"error": "send a Content-Length"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return Response.json(413 if length > MAX_BODY else 400, {"error": "bad Content-Length"})
        if length:
            self.rfile.read(length)
        return None

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("LOG_REQUESTS"):
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(bind: str, port: int, routes: dict[tuple[str, str], Route], counters: Counters | None) -> _Server:
    """Start an HTTP server in a daemon thread and return it (port 0 picks a free port)."""
    handler = type("Handler", (_Handler,), {"routes": routes, "counters": counters})
    server = _Server((bind, port), handler)
    threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True).start()
    return server


def counters_at(counters: Counters, query: Query) -> Response:
    """`/counters`, or `/counters?at=<Unix time>`: the counters as they were then."""
    raw = query.get("at", [""])[0]
    try:
        at = float(raw) if raw else None
        if at is not None and not math.isfinite(at):
            raise ValueError(raw)
    except ValueError:
        return Response.json(400, {"error": f"at={raw[:40]!r} is not a Unix time"})
    snapshot = counters.snapshot_at(at)
    if snapshot is None:
        forgotten = f"the counters keep {HISTORY_SECONDS:g} s and {HISTORY_EVENTS} calls of history"
        return Response.json(404, {"error": forgotten})
    return Response.json(200, snapshot)


def counters_routes(counters: Counters) -> dict[tuple[str, str], Route]:
    return {
        ("GET", "/counters"): lambda q: counters_at(counters, q),
        ("GET", "/healthz"): lambda _q: Response(200, b"ok\n", "text/plain"),
    }


# --- HTTP client side -----------------------------------------------------------------------


class Upstream:
    """An HTTP/1.1 keep-alive client for one upstream service, one connection per thread.

    Honours `http_proxy`/`no_proxy` (the mesh's explicit mode: the proxy is told where to go by
    the absolute-form request target). Counts each request in `counters` under `name`.
    """

    def __init__(self, name: str, hostport: str, counters: Counters, timeout: float) -> None:
        self.name = name
        self.hostport = hostport
        self.counters = counters
        self.timeout = timeout
        self._local = threading.local()
        host = hostport.rsplit(":", 1)[0]
        proxy = urllib.request.getproxies().get("http")
        self._proxy: tuple[str, int] | None = None
        if proxy and not urllib.request.proxy_bypass(host):
            parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            self._proxy = (parts.hostname or "127.0.0.1", parts.port or 80)

    def _connection(self, fresh: bool) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            host, port = self._proxy or _split_hostport(self.hostport)
            conn = _NoDelayConnection(host, port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def request(self, method: str, path: str) -> tuple[int | None, bytes]:
        """Returns (status, body); status None when there was no response (counted as a failure)."""
        target = f"http://{self.hostport}{path}" if self._proxy else path
        status: int | None = None
        body = b""
        for attempt in range(2):
            conn = self._connection(fresh=attempt > 0)
            reused = conn.sock is not None
            try:
                conn.request(method, target, headers={"Host": self.hostport})
                response = conn.getresponse()
                body = response.read()
                status = response.status
                if response.will_close:
                    conn.close()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: retry once
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                break
        self.counters.count_sent(self.name, path.split("?", 1)[0], status)
        return status, body

    def get_json(self, path: str) -> tuple[int | None, Any]:
        status, body = self.request("GET", path)
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, None


class _NoDelayConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _split_hostport(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return (host or hostport, int(port)) if port.isdigit() else (hostport, 80)


# --- gRPC, both sides ------------------------------------------------------------------------

EMOJI_SERVICE = Emoji_pb2.DESCRIPTOR.services_by_name["EmojiService"]
VOTING_SERVICE = Voting_pb2.DESCRIPTOR.services_by_name["VotingService"]
Handler = Callable[[Any], Any]  # request message -> response message, or an RpcFailure


@dataclass(frozen=True)
class RpcFailure:
    """What a servicer returns to end the call with a gRPC error status (counted as such)."""

    code: grpc.StatusCode
    details: str


def method_path(service: Any, method: str) -> str:
    """The path a gRPC call of `method` goes to: `/emojivoto.v1.VotingService/VoteDoughnut`."""
    return f"/{service.full_name}/{method}"


def vote_method(shortcode: str) -> str:
    """Voting's method for one emoji, named as in the original: `:jack_o_lantern:` -> `VoteJackOLantern`."""
    return "Vote" + "".join(part[:1].upper() + part[1:] for part in shortcode.strip(":").split("_"))


def grpc_handler(
    service: Any, messages: ModuleType, impl: Mapping[str, Handler], counters: Counters
) -> grpc.GenericRpcHandler:
    """A grpcio handler for `service`'s methods in `impl`, wired from the descriptors (no
    generated stubs needed), counting every call with the status it ends with."""

    def counted(path: str, handler: Handler) -> Callable[[Any, grpc.ServicerContext], Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                response = handler(request)
            except Exception as exc:  # a bug costs one call (UNKNOWN, as grpcio would say), not more
                response = RpcFailure(grpc.StatusCode.UNKNOWN, type(exc).__name__)
            if isinstance(response, RpcFailure):
                counters.count_received(path, response.code)
                context.abort(response.code, response.details)
            counters.count_received(path, grpc.StatusCode.OK)
            return response

        return call

    handlers = {}
    for method in service.methods:
        if method.name in impl:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                counted(method_path(service, method.name), impl[method.name]),
                request_deserializer=getattr(messages, method.input_type.name).FromString,
                response_serializer=getattr(messages, method.output_type.name).SerializeToString,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def serve_grpc(bind: str, port: int, handler: grpc.GenericRpcHandler) -> tuple[grpc.Server, int]:
    """Start a gRPC server (h2c, no TLS: the mesh sees it) and return it with its port."""
    if port:  # a taken port fails here, in one line, before grpcio's C core logs its own error
        with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            try:
                probe.bind((bind, port))
            except OSError as exc:
                raise OSError(f"{bind}:{port}: {exc.strerror}") from None
    # grpcio sets SO_REUSEPORT by default: a second server on a taken port would share it silently.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix=f"grpc-{port}"),
        options=[("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers((handler,))
    try:
        bound = server.add_insecure_port(f"{bind}:{port}")
    except RuntimeError as exc:  # grpcio says "Failed to bind" this way
        raise OSError(f"{bind}:{port}: {exc}") from None
    if not bound:
        raise OSError(f"{bind}:{port}: address in use or not available")
    server.start()
    return server, bound


class GrpcUpstream:
    """A gRPC client of one service: one channel (HTTP/2, multiplexed), unary calls by method name.

    grpcio honours `grpc_proxy`/`http_proxy` and `no_grpc_proxy`/`no_proxy` by itself: in the mesh's
    explicit mode it opens a CONNECT tunnel through the pod's proxy. Counts each call in
    `counters` under `name`, by its gRPC status.
    """

    def __init__(self, name: str, target: str, service: Any, messages: ModuleType, counters: Counters,
                 timeout: float) -> None:  # fmt: skip
        self.name = name
        self.target = target
        self.counters = counters
        self.timeout = timeout
        self.channel = grpc.insecure_channel(target)
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._paths: dict[str, str] = {}
        for method in service.methods:
            path = method_path(service, method.name)
            self._paths[method.name] = path
            self._calls[method.name] = self.channel.unary_unary(
                path,
                request_serializer=getattr(messages, method.input_type.name).SerializeToString,
                response_deserializer=getattr(messages, method.output_type.name).FromString,
            )

    def call(self, method: str, request: Any) -> tuple[grpc.StatusCode, Any]:
        """Returns (status, response); the response is None unless the status is OK."""
        try:
            response = self._calls[method](request, timeout=self.timeout)
            status = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            response = None
            code = exc.code() if isinstance(exc, grpc.Call) else None
            status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
        self.counters.count_sent(self.name, self._paths[method], status)
        return status, response

    def close(self) -> None:
        self.channel.close()


# --- The services ---------------------------------------------------------------------------


def emoji_service() -> dict[str, Handler]:
    """EmojiService: the list, and one emoji by shortcode (no Emoji in the answer when unknown, as
    the original answers)."""
    listing = Emoji_pb2.ListAllEmojiResponse(
        list=[Emoji_pb2.Emoji(unicode=char, shortcode=code) for code, char in EMOJI.items()]
    )

    def list_all(_request: Any) -> Any:
        return listing

    def find(request: Any) -> Any:
        code = request.Shortcode
        if code not in EMOJI:
            return Emoji_pb2.FindByShortcodeResponse()
        return Emoji_pb2.FindByShortcodeResponse(Emoji=Emoji_pb2.Emoji(unicode=EMOJI[code], shortcode=code))

    return {"ListAll": list_all, "FindByShortcode": find}


def voting_service(failing_emoji: str) -> dict[str, Handler]:
    """VotingService: Vote<Emoji> per emoji (the failing one ends UNKNOWN), and Results."""
    votes: dict[str, int] = {}
    lock = threading.Lock()

    def voter(code: str) -> Handler:
        def vote(_request: Any) -> Any:
            if code == failing_emoji:
                return RpcFailure(grpc.StatusCode.UNKNOWN, f"voting for {code} is broken (on purpose)")
            with lock:
                votes[code] = votes.get(code, 0) + 1
            return Voting_pb2.VoteResponse()

        return vote

    def results(_request: Any) -> Any:
        with lock:
            ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))
        return Voting_pb2.ResultsResponse(
            results=[Voting_pb2.VotingResult(Shortcode=code, Votes=n) for code, n in ranked]
        )

    return {**{vote_method(code): voter(code) for code in EMOJI}, "Results": results}


def web_routes(emoji: GrpcUpstream, voting: GrpcUpstream) -> dict[tuple[str, str], Route]:
    """web's HTTP API over the two gRPC services; any failed call answers 500, as the original."""

    def failed(service: str, status: grpc.StatusCode) -> Response:
        return Response.json(500, {"error": f"{service} service answered {status.name}"})

    def list_all(_q: Query) -> Response:
        status, listing = emoji.call("ListAll", Emoji_pb2.ListAllEmojiRequest())
        if listing is None:
            return failed("emoji", status)
        return Response.json(200, [{"shortcode": e.shortcode, "unicode": e.unicode} for e in listing.list])

    def vote(q: Query) -> Response:
        code = q.get("choice", [""])[0]
        status, found = emoji.call("FindByShortcode", Emoji_pb2.FindByShortcodeRequest(Shortcode=code))
        if found is None:
            return failed("emoji", status)
        if not found.HasField("Emoji"):
            return Response.json(400, {"error": f"no emoji {code!r}"})
        status, voted = voting.call(vote_method(code), Voting_pb2.VoteRequest())
        if voted is None:
            return failed("voting", status)
        return Response.json(200, {"shortcode": found.Emoji.shortcode, "unicode": found.Emoji.unicode})

    def leaderboard(_q: Query) -> Response:
        status, ranked = voting.call("Results", Voting_pb2.ResultsRequest())
        if ranked is None:
            return failed("voting", status)
        status, listing = emoji.call("ListAll", Emoji_pb2.ListAllEmojiRequest())
        if listing is None:
            return failed("emoji", status)
        chars = {e.shortcode: e.unicode for e in listing.list}
        return Response.json(
            200,
            [{"shortcode": r.Shortcode, "votes": r.Votes, "unicode": chars.get(r.Shortcode, "?")}
             for r in ranked.results],
        )  # fmt: skip

    def index(_q: Query) -> Response:
        return Response(200, INDEX_HTML.encode(), "text/html; charset=utf-8")

    return {
        ("GET", "/"): index,
        ("GET", "/api/list"): list_all,
        ("GET", "/api/vote"): vote,
        ("GET", "/api/leaderboard"): leaderboard,
    }


INDEX_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>emojivoto</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}
button{font-size:2em;margin:.1em;border:0;background:none;cursor:pointer}#msg{min-height:1.5em}</style>
</head><body><h1>🗳 emojivoto</h1><p>Vote for your favourite emoji.
(Voting for 🍩 is broken, on purpose: ask the mesh who fails.)</p><p id="msg"></p><div id="grid"></div>
<h2>Leaderboard</h2><ol id="board"></ol>
<script>
async function board(){const r=await fetch('api/leaderboard');if(!r.ok)return;
document.getElementById('board').innerHTML=(await r.json()).slice(0,10)
.map(e=>`<li>${e.unicode} ${e.votes}</li>`).join('')}
async function vote(code){const r=await fetch('api/vote?choice='+encodeURIComponent(code));
document.getElementById('msg').textContent=
r.ok?'Thanks for voting '+code:'Voting failed: HTTP '+r.status;board()}
fetch('api/list').then(r=>r.json()).then(list=>{const g=document.getElementById('grid');
for(const e of list){const b=document.createElement('button');b.title=e.shortcode;b.textContent=e.unicode;
b.onclick=()=>vote(e.shortcode);g.appendChild(b)}});board();
</script></body></html>
"""


class FailingShareChooser:
    """Chooses each vote: the failing emoji exactly `share` of the time, spread evenly.

    Vote i is for the failing emoji when floor((i + 1) * share) > floor(i * share), so after n
    votes the failing count is floor(n * share): any window of votes has the same share, +-1.
    """

    def __init__(self, share: float, failing: str, rng: random.Random) -> None:
        if not 0 <= share <= 1:
            raise ValueError("FAILURE_SHARE must be between 0 and 1")
        self.share = share
        self.failing = failing
        self.rng = rng
        self.count = 0

    def choose(self, candidates: list[str]) -> str:
        i = self.count
        self.count += 1
        if math.floor((i + 1) * self.share + 1e-9) > math.floor(i * self.share + 1e-9):
            return self.failing
        others = [c for c in candidates if c != self.failing] or [c for c in EMOJI if c != self.failing]
        return self.rng.choice(others)


def run_vote_bot(
    web: Upstream,
    counters: Counters,
    rate: float,
    chooser: FailingShareChooser,
    max_seconds: float,
    stop: threading.Event,
) -> None:
    """One list and one vote per loop, `rate` loops per second, until `stop` or `max_seconds`."""
    start = time.monotonic()
    loops = 0
    while not stop.is_set() and (max_seconds <= 0 or time.monotonic() - start < max_seconds):
        status, listing = web.get_json("/api/list")
        codes = [e["shortcode"] for e in listing if isinstance(e, dict)] if status == 200 and listing else []
        choice = chooser.choose(codes or list(EMOJI))
        web.request("GET", f"/api/vote?choice={quote(choice)}")
        counters.bump("loops")
        if choice == chooser.failing:
            counters.bump("failing_votes")
        loops += 1
        delay = start + loops / rate - time.monotonic()
        if delay < -1.0:  # fell behind (a slow upstream): carry on at the rate, no burst
            start, loops = time.monotonic(), 0
        stop.wait(max(0.0, delay))


# --- Entry point ----------------------------------------------------------------------------


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"emojivoto: {name}={raw!r} is not a number") from None


def _announce(service: str, addresses: list[str]) -> None:
    print(f"emojivoto {service}: listening on {', '.join(addresses)}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    if len(args) != 1 or args[0] not in SERVICES:
        print(f"usage: python3 -m kubectl_mesh.demo.emojivoto {{{'|'.join(SERVICES)}}}", file=sys.stderr)
        return 2
    service = args[0]
    bind = env.get("BIND", "0.0.0.0")
    port = int(_env_float(env, "PORT", 8080))
    counters_port = int(_env_float(env, "COUNTERS_PORT", 8801))
    timeout = _env_float(env, "UPSTREAM_TIMEOUT", 5.0)
    failing = env.get("FAILING_EMOJI", DEFAULT_FAILING_EMOJI)
    counters = Counters(service)
    stop = stop_on_signals()
    servers: list[_Server] = []
    grpc_servers: list[grpc.Server] = []
    addresses: list[str] = []

    def start_grpc(service_desc: Any, messages: ModuleType, impl: Mapping[str, Handler]) -> None:
        server, bound = serve_grpc(bind, port, grpc_handler(service_desc, messages, impl, counters))
        grpc_servers.append(server)
        addresses.append(f"{bind}:{bound} (gRPC)")

    def start_http(listen: int, routes: dict[tuple[str, str], Route], count: Counters | None) -> None:
        servers.append(serve(bind, listen, routes, count))
        addresses.append(f"{bind}:{servers[-1].server_address[1]}")

    try:
        if counters_port:
            start_http(counters_port, counters_routes(counters), None)
        if service == "emoji":
            start_grpc(EMOJI_SERVICE, Emoji_pb2, emoji_service())
        elif service == "voting":
            if failing not in EMOJI:
                raise ValueError(f"FAILING_EMOJI={failing!r} is not one of the emoji")
            start_grpc(VOTING_SERVICE, Voting_pb2, voting_service(failing))
        elif service == "web":
            emoji_host = env.get("EMOJISVC_HOST", "emoji-svc:8080")
            voting_host = env.get("VOTINGSVC_HOST", "voting-svc:8080")
            emoji = GrpcUpstream("emoji", emoji_host, EMOJI_SERVICE, Emoji_pb2, counters, timeout)
            voting = GrpcUpstream("voting", voting_host, VOTING_SERVICE, Voting_pb2, counters, timeout)
            start_http(port, web_routes(emoji, voting), counters)
        else:
            web = Upstream("web", env.get("WEB_HOST", "web-svc:80"), counters, timeout)
            rate = _env_float(env, "REQUEST_RATE", 1.0)
            if rate <= 0:
                raise SystemExit("emojivoto: REQUEST_RATE must be above 0")
            chooser = FailingShareChooser(_env_float(env, "FAILURE_SHARE", 0.15), failing, random.Random())
            max_seconds = _env_float(env, "MAX_SECONDS", 0)
            _announce(service, addresses)
            print(f"vote-bot: {rate:g} loops/s to {web.hostport}", file=sys.stderr, flush=True)
            run_vote_bot(web, counters, rate, chooser, max_seconds, stop)
    except OSError as exc:
        print(f"emojivoto {service}: cannot listen: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"emojivoto {service}: {exc}", file=sys.stderr)
        return 1
    if service != "vote-bot":
        _announce(service, addresses)

    def stop_grpc() -> None:
        for grpc_server in grpc_servers:
            grpc_server.stop(grace=1).wait(2)

    return wait_then_shutdown(stop, servers, before=stop_grpc)


if __name__ == "__main__":
    sys.exit(main())
