"""Issue #10, "the proxy must do no harm": every defect, against real `mesh-proxy run` processes.

Black-box. Behind the proxies sits the desync oracle (desync_backend.py), which records every
request it parses; each test asserts
- what the backend saw (count, targets, headers),
- that every client got its own response (`req-<n> <method> <target>`),
- what the proxy's metrics counted,
- the proxy's RSS and descriptor count afterwards.

Two hops are the client's sidecar (`client_proxy`, an explicit HTTP forward proxy on its outbound
port) and the server's sidecar (`server`, inbound forwarding to the backend). The transparent
cases run in network namespaces (root), like test_proxy_transparent.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.proxy.desync_backend import DesyncBackend, Seen, chunked_body, pattern, pattern_digest
from tests.proxy.netns_pods import HERE, PodPair
from tests.support.proxy_process import CLIENT_ID, SERVER_ID, ProxyProcess, Sample, start_proxy

pytestmark = pytest.mark.timeout(45)

EVIL = "evil/deployment/evil/evil-pod"
SMUGGLED = f"GET /smuggled HTTP/1.1\r\nHost: x\r\nx-mesh-src: {EVIL}\r\n\r\n".encode()
MIB = 1024 * 1024
RSS_LIMIT_KIB = 100 * 1024  # well under the 256 Mi the injector sets


# --- a raw client that reads whole responses ----------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return values[-1] if values else None

    def mesh_headers(self) -> list[str]:
        return [n for n, _ in self.headers if n.lower().startswith("x-mesh-")]


@dataclass
class Client:
    """One client connection: send raw bytes, read responses framed by the rules of RFC 9112."""

    port: int
    timeout: float = 5.0
    sock: socket.socket = field(init=False)
    buf: bytes = b""

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"closed; unparsed {self.buf[:200]!r}")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def head(self) -> Reply:
        """Read one final response head (interim 1xx skipped); the body is left unread."""
        while True:
            status_line = self._line()
            match = re.fullmatch(rb"HTTP/1\.[01] (\d{3})(?: .*)?", status_line)
            assert match, f"not a status line: {status_line[:200]!r}"
            headers = []
            while line := self._line():
                name, _, value = line.partition(b":")
                headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
            status = int(match.group(1))
            if not 100 <= status < 200:
                return Reply(status, headers, b"")

    def reply(self, method: str = "GET") -> Reply:
        r = self.head()
        if method == "HEAD" or r.status in (204, 304) or (method == "CONNECT" and 200 <= r.status < 300):
            return r
        if (r.header("transfer-encoding") or "").lower() == "chunked":
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._exact(size))
                self._exact(2)
            while self._line():
                pass
            r.body = b"".join(parts)
        elif (length := r.header("content-length")) is not None:
            r.body = self._exact(int(length))
        else:
            try:
                while True:
                    self._more()
            except EOFError:
                pass
            r.body, self.buf = self.buf, b""
        return r

    def closed(self, wait: float) -> bool:
        """True if the peer closes (EOF or reset) within `wait` seconds, whatever it sent first."""
        self.sock.settimeout(wait)
        try:
            while data := self.sock.recv(65536):
                self.buf += data
        except TimeoutError:
            return False
        except OSError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()


def request(
    port: int, method: str, target: str, host: str, *extra: str, body: bytes = b"", timeout: float = 5.0
) -> Reply:
    """One request on a new connection; returns the response."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *extra]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    c = Client(port, timeout)
    try:
        c.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return c.reply(method)
    finally:
        c.close()


def request_to(port: int, host: str, target: str) -> Reply:
    return request(port, "GET", target, host)


def assert_own(reply: Reply, backend: DesyncBackend, method: str, target: str) -> Seen:
    """The client got the answer to ITS request: status, X-Seen and body all name it."""
    assert reply.status == 200, (reply.status, reply.body[:200])
    seq = int(reply.header("x-seen") or 0)
    assert reply.body == f"req-{seq} {method} {target}".encode(), (
        f"{method} {target} got somebody else's response: {reply.body[:200]!r}"
    )
    seen = backend.seen()[seq - 1]
    assert (seen.method, seen.target) == (method, target)
    return seen


# --- metrics and process health ------------------------------------------------------------------
def all_samples(proxy: ProxyProcess) -> list[Sample]:
    out = []
    for family in text_string_to_metric_families(proxy.exposition()):
        out += [Sample(s.name, dict(s.labels), s.value) for s in family.samples]
    return out


def forged(proxy: ProxyProcess) -> list[Sample]:
    """Samples carrying a label value that only a forged identity header could have put there."""
    return [s for s in all_samples(proxy) if any("evil" in v for v in s.labels.values())]


def src_deployments(proxy: ProxyProcess) -> set[str | None]:
    return {s.labels.get("src_deployment") for s in proxy.samples("request_total")}


def assert_settled(proxy: ProxyProcess, fd_base: int, slack: int = 10) -> None:
    """Alive, descriptors back near the baseline (within 3 s), RSS bounded."""
    deadline = time.monotonic() + 3
    while proxy.fd_count() > fd_base + slack and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.process.poll() is None, proxy.log()[-2000:]
    assert proxy.fd_count() <= fd_base + slack, f"descriptors: {proxy.fd_count()} vs baseline {fd_base}"
    assert proxy.rss_kib() < RSS_LIMIT_KIB, f"RSS {proxy.rss_kib()} KiB"


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def backend() -> Iterator[DesyncBackend]:
    b = DesyncBackend()
    yield b
    b.stop()


@pytest.fixture
def server(backend: DesyncBackend, tmp_path: Path) -> Iterator[ProxyProcess]:
    """The backend's sidecar: explicit inbound, response timeout 2 s."""
    proxy = start_proxy(
        tmp_path,
        "--inbound-forward", f"127.0.0.1:{backend.port}", "--response-timeout", "2",
        identity=SERVER_ID, rlimit_nofile=4096,
    )  # fmt: skip
    yield proxy
    proxy.stop()


@pytest.fixture
def forward(tmp_path: Path) -> Iterator[ProxyProcess]:
    """A client's sidecar whose runaway loops (today's proxy) stop at 1024 descriptors."""
    proxy = start_proxy(tmp_path, "--inbound-forward", "127.0.0.1:9", identity=CLIENT_ID, rlimit_nofile=1024)
    yield proxy
    proxy.stop()


def entry(hops: int, server: ProxyProcess, client_proxy: ProxyProcess) -> tuple[int, str]:
    """Where a client sends, and the Host it names: the server's inbound, or through the client's sidecar."""
    if hops == 1:
        return server.inbound, "web"
    return client_proxy.outbound, f"127.0.0.1:{server.inbound}"


# === D1: request smuggling through Connection: ===================================================
SMUGGLING_CASES = [
    ("content-length", "length"),
    ("keep-alive, Content-Length", "length"),
    ("transfer-encoding", "length"),
    ("host", "length"),
    ("transfer-encoding", "chunked"),
]


@pytest.mark.parametrize("hops", [1, 2])
@pytest.mark.parametrize(("token", "framing"), SMUGGLING_CASES)
def test_connection_header_never_drops_framing(
    token: str,
    framing: str,
    hops: int,
    backend: DesyncBackend,
    server: ProxyProcess,
    client_proxy: ProxyProcess,
) -> None:
    port, host = entry(hops, server, client_proxy)
    fd_base = server.fd_count()
    if framing == "length":
        framed = f"Content-Length: {len(SMUGGLED)}\r\n\r\n".encode() + SMUGGLED
    else:
        framed = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    c = Client(port)
    c.send(f"POST / HTTP/1.1\r\nHost: {host}\r\nConnection: {token}\r\n".encode() + framed)
    post = c.reply("POST")
    c.close()

    seen = backend.settled()
    assert [(r.method, r.target) for r in seen] == [("POST", "/")], "the body was parsed as a request"
    [request] = seen
    assert request.body == SMUGGLED, "the body reaches the app intact"
    if framing == "length":
        assert request.header("content-length") == str(len(SMUGGLED))
    else:
        assert (request.header("transfer-encoding") or "").lower() == "chunked"
    assert request.header("host") == host, "a Connection token never removes Host"
    assert request.mesh_headers() == []
    assert_own(post, backend, "POST", "/")
    assert server.value("request_total") == 1
    if hops == 2:
        assert client_proxy.value("request_total") == 1

    # Later clients, on their own connections, over the pooled upstream: each gets its own answer.
    for target in ("/second", "/third"):
        assert_own(request_to(port, host, target), backend, "GET", target)
    assert backend.targets() == ["/", "/second", "/third"]
    assert server.value("request_total") == 3
    assert forged(server) == []
    assert src_deployments(server) <= ({"vote"} if hops == 2 else {None})
    assert_settled(server, fd_base)


# === D2: stray bytes on pooled connections ======================================================
EXTRA_RESPONSE = b"HTTP/1.1 200 OK\r\nX-Seen: 999\r\nContent-Length: 12\r\n\r\nextra-reply\n"


@pytest.mark.parametrize("delay", [0.0, 0.05], ids=["immediate", "delayed"])
@pytest.mark.parametrize("stray", [EXTRA_RESPONSE, b"JUNK\r\n\r\n"], ids=["extra-response", "junk"])
def test_stray_bytes_after_a_response_never_reach_the_next_client(
    stray: bytes, delay: float, backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    backend.after_response, backend.after_delay = stray, delay
    first = assert_own(request_to(server.inbound, "web", "/first"), backend, "GET", "/first")
    backend.after_response = b""  # only the first connection is dirty
    time.sleep(0.3)  # the stray bytes have arrived on the pooled connection by now
    second = assert_own(request_to(server.inbound, "web", "/second"), backend, "GET", "/second")
    assert second.conn != first.conn, "the dirty upstream connection was reused"
    third = assert_own(request_to(server.inbound, "web", "/third"), backend, "GET", "/third")
    assert third.conn == second.conn, "a clean connection is still pooled"
    assert backend.targets() == ["/first", "/second", "/third"]
    assert server.value("request_total") == 3
    assert server.value("response_total", classification="failure") == 0
    assert_settled(server, fd_base)


# === D3: replayed requests ======================================================================
def test_post_on_a_stale_pooled_connection_is_never_replayed(
    backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    backend.drop_nth = 2  # the second request of each connection is read whole, then the backend hangs up
    warm = assert_own(request_to(server.inbound, "web", "/warm"), backend, "GET", "/warm")
    pay = request(server.inbound, "POST", "/pay", "web", body=b"amount=100")
    posts = [r for r in backend.settled() if r.method == "POST"]
    assert len(posts) == 1, f"the POST reached the backend {len(posts)} times"
    assert (posts[0].conn, posts[0].index, posts[0].body) == (warm.conn, 2, b"amount=100")
    assert pay.status == 502
    assert server.value("request_total") == 2
    assert server.value("response_total", status_code="502", classification="failure") == 1
    assert_settled(server, fd_base)


def test_get_on_a_stale_pooled_connection_is_retried_once_on_a_fresh_one(
    backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    backend.drop_nth = 2
    assert_own(request_to(server.inbound, "web", "/warm"), backend, "GET", "/warm")
    again = assert_own(request_to(server.inbound, "web", "/again"), backend, "GET", "/again")
    tries = [r for r in backend.settled() if r.target == "/again"]
    assert 1 <= len(tries) <= 2 and len({r.conn for r in tries}) == len(tries), "at most one retry, fresh"
    assert again.index == 1, "the retry went out on a fresh connection"
    assert server.value("request_total") == 2
    assert server.value("response_total", classification="failure") == 0
    assert_settled(server, fd_base)


# === D4: forwarding loops =======================================================================
SPELLINGS = ["127.0.0.1", "localhost", "127.1", "[::ffff:127.0.0.1]", "2130706433", "0.0.0.0"]


@pytest.mark.parametrize("listener", ["outbound", "inbound", "admin"])
def test_the_proxys_own_listeners_are_refused_by_any_spelling(listener: str, forward: ProxyProcess) -> None:
    port = getattr(forward, listener)
    fd_base = forward.fd_count()

    def counts() -> tuple[float, float]:
        return forward.value("request_total"), forward.value("response_total", error="loop")

    wrong = []  # every spelling is tried (for 15 s at most), so that a failure lists them all
    begin = time.monotonic()
    for spelling in SPELLINGS:
        authority = f"{spelling}:{port}"
        for target in ("/", f"http://{authority}/"):
            case = f"{target} Host: {authority}"
            if time.monotonic() - begin > 15:
                wrong.append(f"{case}: not tried, out of time")
                continue
            try:
                requests, loops = counts()
                start = time.monotonic()
                status = request(forward.outbound, "GET", target, authority, timeout=2).status
                took = time.monotonic() - start
                more_requests, more_loops = counts()
            except (OSError, EOFError) as error:  # today: the loop ate the descriptors, /metrics too
                wrong.append(f"{case}: {error!r}")
                continue
            outcome = (status, round(took, 2), more_requests - requests, more_loops - loops)
            fds = forward.fd_count() - fd_base
            if outcome != (400, outcome[1], 1, 1) or took >= 1.0 or fds > 5:
                wrong.append(f"{case}: (status, seconds, requests, loops) = {outcome}, fds +{fds}")
    assert not wrong, "\n".join(wrong)
    assert_settled(forward, fd_base, slack=5)


class LoopbackServer:
    """A test server on 127.0.0.1: a thread accepts, `connected(sock, n)` takes each connection."""

    def __init__(self) -> None:
        self.connections = 0
        self.socks: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self.socks.append(sock)
            self.connected(sock, self.connections)

    def connected(self, sock: socket.socket, n: int) -> None:
        """Hold the connection (an app that never reads, sends or closes)."""

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        for s in list(self.socks):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class Relay(LoopbackServer):
    """A TCP relay on loopback (port → target), like a NAT or a second proxy; counts connections.

    After `limit` connections it hangs up on new ones, so a loop through it ends even today.
    """

    def __init__(self, target: int, limit: int = 6) -> None:
        self.target = target
        self.limit = limit
        super().__init__()

    def connected(self, a: socket.socket, n: int) -> None:
        if n > self.limit:
            a.close()
            return
        b = socket.create_connection(("127.0.0.1", self.target))
        self.socks.append(b)
        for src, dst in ((a, b), (b, a)):
            threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def test_a_loop_through_another_address_stops_on_its_second_visit(forward: ProxyProcess) -> None:
    fd_base = forward.fd_count()
    relay = Relay(forward.outbound)
    try:
        start = time.monotonic()
        c = Client(forward.outbound)
        c.send(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{relay.port}\r\nConnection: close\r\n\r\n".encode())
        reply = c.reply()
        elapsed = time.monotonic() - start
        rest = c.closed(2.0) and c.buf
        c.close()
        assert reply.status == 400, reply
        assert not rest, f"more than one response: {rest[:200]!r}"
        assert elapsed < 1.0, elapsed
        assert relay.connections <= 2, f"the loop went round {relay.connections} times"
        assert forward.value("request_total") == 1, "the first visit counts once, the second not at all"
        assert forward.value("response_total", status_code="400") == 1
    finally:
        relay.stop()
    assert_settled(forward, fd_base, slack=5)


# === D5: memory of /metrics =====================================================================
def scrape_bounded(proxy: ProxyProcess, limit: int) -> tuple[int, str]:
    """Read /metrics up to `limit` + 1 bytes: (bytes read, text if complete else "")."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.admin, timeout=30)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        data = b""
        while len(data) <= limit and (piece := r.read(65536)):
            data += piece
        complete = len(data) <= limit
        return len(data), data.decode() if complete else ""
    finally:
        conn.close()


# 200 routes of 29 samples each (request, response, 26 latency buckets, sum, count) whose authority
# may be 253 bytes: ~1.5 MB of authority text alone, ~2.05 MB with the rest; today 180 MB.
SCRAPE_LIMIT = 3_000_000


@pytest.mark.slow
def test_long_host_values_keep_the_scrape_and_memory_bounded(
    backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    hosts = ["a" * 29_994 + f"{i:06d}" for i in range(200)]  # 30,000 bytes; distinct only at the end
    c = Client(server.inbound, timeout=10)
    for i, host in enumerate(hosts):
        c.send(f"GET /{i} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert c.reply().status == 200
    c.close()
    assert len(backend.seen()) == 200

    peak = [server.rss_kib()]
    scraping = threading.Event()

    def watch() -> None:
        while not scraping.is_set():
            peak.append(server.rss_kib())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        size, text = scrape_bounded(server, SCRAPE_LIMIT)
    finally:
        scraping.set()
        watcher.join()
    assert size <= SCRAPE_LIMIT and max(peak) < RSS_LIMIT_KIB, (
        f"scrape {size} bytes (read up to {SCRAPE_LIMIT}), peak RSS {max(peak)} KiB"
    )
    longest = max(map(len, text.splitlines()))
    assert longest <= 1024, f"a sample line of {longest} bytes"
    authorities = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "authority" in s.labels:
                authorities.add(s.labels["authority"])
    assert max(map(len, authorities)) <= 253
    long_ones = {a for a in authorities if a.startswith("aaaa")}
    assert len(long_ones) == 200, "distinct hosts must stay distinct series"
    assert server.value("request_total") == 200
    assert_settled(server, fd_base)


def test_invalid_status_codes_share_one_bucket(backend: DesyncBackend, server: ProxyProcess) -> None:
    fd_base = server.fd_count()
    for status, target in ((999, "/nine"), (99, "/zero-nine")):
        backend.status = status
        c = Client(server.inbound)
        c.send(f"GET {target} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
        c.closed(5.0)
        c.close()
        assert c.buf.startswith(b"HTTP/1.1 "), (status, c.buf[:200])
    assert backend.targets() == ["/nine", "/zero-nine"]
    codes = {s.labels["status_code"] for s in all_samples(server) if "status_code" in s.labels}
    assert not codes & {"999", "099", "99"}, codes
    bucket = [
        s
        for s in server.samples("response_total")
        if "status_code" not in s.labels and s.labels["classification"] == "failure"
    ]
    assert sum(s.value for s in bucket) == 2, server.samples("response_total")
    assert server.value("request_total") == 2
    assert_settled(server, fd_base)


# === D6: labels apps cannot forge ===============================================================
@pytest.mark.parametrize("method", ["GET", "get", "FOO"])
def test_a_connect_tunnel_to_a_peer_cannot_forge_the_source(
    method: str, backend: DesyncBackend, server: ProxyProcess, client_proxy: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    c = Client(client_proxy.outbound)
    authority = f"127.0.0.1:{server.inbound}"
    c.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    inner: Reply | None = None
    if c.reply("CONNECT").status == 200:
        c.send(f"{method} /tunnelled HTTP/1.1\r\nHost: web\r\nx-mesh-src: {EVIL}\r\n\r\n".encode())
        # Refused or closed is fine, as long as nothing was counted under a forged name.
        with contextlib.suppress(EOFError, OSError, AssertionError):
            inner = c.reply()
    c.close()
    time.sleep(0.2)
    assert forged(server) == [], "a tunnelled request chose its own source labels"
    assert src_deployments(server) <= {None, "vote"}
    if inner is not None and inner.status == 200:
        assert_own(inner, backend, method, "/tunnelled")
        assert inner.mesh_headers() == [], "the app behind the client proxy saw a mesh header"
    if method == "GET":  # parsed as HTTP on the server side: the app never sees a mesh header
        assert all(r.mesh_headers() == [] for r in backend.settled())
    assert_settled(server, fd_base)


@pytest.mark.parametrize("method", ["get", "FOO"])
def test_unknown_methods_through_two_hops_cannot_forge_the_source(
    method: str, backend: DesyncBackend, server: ProxyProcess, client_proxy: ProxyProcess
) -> None:
    fd_base, client_fds = server.fd_count(), client_proxy.fd_count()
    c = Client(client_proxy.outbound)
    c.send(f"{method} / HTTP/1.1\r\nHost: 127.0.0.1:{server.inbound}\r\nx-mesh-src: {EVIL}\r\n\r\n".encode())
    c.closed(3.0)
    c.close()
    assert forged(server) == [] and forged(client_proxy) == []
    assert all(r.mesh_headers() == [] for r in backend.settled())
    assert_settled(server, fd_base)
    assert_settled(client_proxy, client_fds)


def test_apps_never_see_mesh_headers_and_unmeshed_clients_learn_no_identity(
    backend: DesyncBackend, server: ProxyProcess, client_proxy: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    backend.extra_headers = [("X-Mesh-Dst", EVIL), ("X-Mesh-Src", EVIL)]
    unmeshed = request(server.inbound, "GET", "/unmeshed", "web")
    assert_own(unmeshed, backend, "GET", "/unmeshed")
    assert unmeshed.mesh_headers() == [], "an unmeshed client learnt the server's identity"
    port, host = entry(2, server, client_proxy)
    meshed = request(port, "GET", "/meshed", host, f"x-mesh-src: {EVIL}", f"x-mesh-dst: {EVIL}")
    assert_own(meshed, backend, "GET", "/meshed")
    assert meshed.mesh_headers() == [], "the client app saw a mesh header"
    assert all(r.mesh_headers() == [] for r in backend.settled()), "the server app saw a mesh header"
    # Between the proxies the identities still flow: each side names the other.
    assert server.value("request_total", src_deployment="vote") == 1
    assert client_proxy.value("request_total", dst_deployment="web") == 1
    assert forged(server) == [] and forged(client_proxy) == []
    assert_settled(server, fd_base)


# === D7: timeouts with the meaning users expect =================================================
@pytest.mark.slow
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_upload_making_progress_outlives_the_response_timeout(
    framing: str, backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    pieces = [os.urandom(4096) for _ in range(25)]  # one every 0.2 s: 5 s in all, > the 2 s timeout
    body = b"".join(pieces)
    c = Client(server.inbound, timeout=10)
    if framing == "length":
        c.send(f"PUT /upload HTTP/1.1\r\nHost: web\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    else:
        c.send(b"PUT /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n")
    start = time.monotonic()
    try:
        for piece in pieces:
            time.sleep(0.2)
            c.send(piece if framing == "length" else b"%x\r\n%b\r\n" % (len(piece), piece))
        if framing == "chunked":
            c.send(b"0\r\n\r\n")
    except OSError as error:
        c.closed(1.0)
        pytest.fail(f"upload cut after {time.monotonic() - start:.1f} s ({error!r}): {c.buf[:80]!r}")
    reply = c.reply("PUT")
    c.close()
    assert reply.status == 200, reply
    seen = assert_own(reply, backend, "PUT", "/upload")
    assert hashlib.sha256(seen.body).digest() == hashlib.sha256(body).digest()
    assert server.value("response_total", classification="failure") == 0
    assert_settled(server, fd_base)


@pytest.mark.slow
def test_a_client_that_pauses_reading_gets_the_whole_download(
    backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    size = 50 * MIB
    backend.body_size = size
    c = Client(server.inbound, timeout=10)
    c.send(b"GET /big HTTP/1.1\r\nHost: web\r\n\r\n")
    head = c.head()
    assert head.status == 200 and head.header("content-length") == str(size), head
    digest = hashlib.sha256()
    received = len(c.buf)
    digest.update(c.buf)
    paused = False
    try:
        while received < size:
            piece = c.sock.recv(min(1 << 20, size - received))
            if not piece:
                break
            digest.update(piece)
            received += len(piece)
            if not paused and received >= MIB:
                paused = True
                time.sleep(4.0)  # the client stalls longer than the 2 s response timeout
    except OSError:
        pass
    c.close()
    assert received == size, f"download cut at {received} of {size} bytes"
    assert digest.hexdigest() == pattern_digest(size)
    time.sleep(0.2)
    assert server.value("response_total", error="timeout") == 0, "a client's stall blamed on the upstream"
    assert server.value("response_total", classification="success", status_code="200") == 1
    assert_settled(server, fd_base)


@pytest.mark.slow
@pytest.mark.parametrize("upload_seconds", [0.0, 3.0])
def test_a_silent_backend_gets_504_two_seconds_after_the_request_is_complete(
    upload_seconds: float, backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    backend.hang = True
    pieces = max(1, int(upload_seconds / 0.2))
    c = Client(server.inbound, timeout=10)
    c.send(f"POST /hang HTTP/1.1\r\nHost: web\r\nContent-Length: {pieces * 100}\r\n\r\n".encode())
    try:
        for _ in range(pieces):
            if upload_seconds:
                time.sleep(0.2)
            c.send(b"p" * 100)
    except OSError:
        pytest.fail("the proxy gave up while the upload was still making progress")
    complete = time.monotonic()
    reply = c.reply("POST")
    waited = time.monotonic() - complete
    c.close()
    assert reply.status == 504, reply
    assert 1.7 <= waited <= 3.5, f"504 came {waited:.2f} s after the request was complete"
    assert [r.target for r in backend.seen()] == ["/hang"]
    assert server.value("response_total", status_code="504", error="timeout") == 1
    assert_settled(server, fd_base)


# === D8: slow and idle clients ==================================================================
def quick_get(port: int, path: str, host: str = "127.0.0.1", timeout: float = 1.0) -> tuple[int, float]:
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        r.read()
        return r.status, time.monotonic() - start
    finally:
        conn.close()


@pytest.mark.slow
def test_slowloris_clients_are_cut_at_the_header_deadline(backend: DesyncBackend, tmp_path: Path) -> None:
    proxy = start_proxy(
        tmp_path,
        "--inbound-forward", f"127.0.0.1:{backend.port}",
        "--header-timeout", "1", "--max-connections", "200",
        identity=SERVER_ID, rlimit_nofile=4096,
    )  # fmt: skip
    socks: list[socket.socket] = []
    try:
        fd_base = proxy.fd_count()
        head = b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: " + b"a" * 100
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5)
            s.setblocking(False)
            socks.append(s)
        received: dict[socket.socket, bytes] = {s: b"" for s in socks}
        sent = dict.fromkeys(socks, 0)
        closed_at: dict[socket.socket, float] = {}
        start = time.monotonic()
        next_byte = start
        normal_done = False
        while len(closed_at) < len(socks) and time.monotonic() - start < 5:
            now = time.monotonic()
            if now >= next_byte:  # one more header byte on every open connection
                next_byte = now + 0.3
                for s in socks:
                    if s not in closed_at:
                        try:
                            s.send(head[sent[s] : sent[s] + 1])
                            sent[s] += 1
                        except OSError:
                            closed_at[s] = now
            if not normal_done and now - start > 0.5:  # while they are open, others are served
                normal_done = True
                assert proxy.fd_count() <= fd_base + 200 + 20, "more connections than --max-connections"
                target = f"http://127.0.0.1:{backend.port}/normal"
                status, took = quick_get(proxy.outbound, target, f"127.0.0.1:{backend.port}")
                assert status == 200 and took < 1.0, (status, took)
                assert quick_get(proxy.admin, "/metrics")[0] == 200
            readable, _, _ = select.select([s for s in socks if s not in closed_at], [], [], 0.05)
            for s in readable:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    received[s] += data
                else:
                    closed_at[s] = time.monotonic()
        assert normal_done
        assert len(closed_at) == len(socks), f"{len(socks) - len(closed_at)} slowloris connections still open"
        assert max(closed_at.values()) - start < 3.5
        answers = {received[s][:12] for s in socks if received[s]}
        assert answers <= {b"HTTP/1.1 408"}, answers
        assert quick_get(proxy.inbound, "/after", "web")[0] == 200
        assert backend.targets() == ["/normal", "/after"]
        assert_settled(proxy, fd_base)
    finally:
        for s in socks:
            s.close()
        proxy.stop()


@pytest.mark.slow
def test_probes_answer_when_app_traffic_has_used_up_the_descriptors(
    backend: DesyncBackend, tmp_path: Path
) -> None:
    proxy = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{backend.port}", identity=SERVER_ID, rlimit_nofile=256
    )
    socks: list[socket.socket] = []
    try:
        fd_base = proxy.fd_count()
        for _ in range(320):  # more than the proxy may open (256): it must refuse some
            s = socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\n")  # HTTP, head still open: each holds a descriptor
            socks.append(s)
        time.sleep(0.5)
        assert proxy.process.poll() is None
        for path in ("/live", "/ready", "/metrics"):
            try:
                status, took = quick_get(proxy.admin, path)
            except OSError as error:
                pytest.fail(f"{path}: {error!r} with the descriptors used up")
            assert status == 200 and took < 1.0, (path, status, took)
        for s in socks:
            s.close()
        socks.clear()
        assert_settled(proxy, fd_base)
        assert quick_get(proxy.inbound, "/after", "web", timeout=5)[0] == 200
    finally:
        for s in socks:
            s.close()
        proxy.stop()


def test_sigterm_does_not_wait_for_silent_clients(backend: DesyncBackend, tmp_path: Path) -> None:
    proxy = start_proxy(
        tmp_path,
        "--inbound-forward",
        f"127.0.0.1:{backend.port}",
        "--shutdown-grace",
        "20",
        identity=SERVER_ID,
    )
    silent = [
        socket.create_connection(("127.0.0.1", port), timeout=5) for port in (proxy.inbound, proxy.outbound)
    ]
    try:
        time.sleep(0.3)
        start = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        try:
            rc = proxy.process.wait(3)
        except Exception:
            rc = None
        took = time.monotonic() - start
        assert rc == 0 and took < 2.0, f"exit {rc} after {took:.1f} s with connected but silent clients"
    finally:
        for s in silent:
            s.close()
        if proxy.process.poll() is None:
            proxy.process.kill()
            proxy.process.wait()


# === D6 in transparent mode (root): a first byte delayed past the detect timeout ==============
netns = pytest.mark.skipif(
    not (shutil.which("iptables") and shutil.which("ip") and shutil.which("curl")),
    reason="needs iptables, iproute2 and curl (apt-get install -y iptables iproute2 curl)",
)
APP_PORT = 8080
APP_LISTENING = """
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()
        break
    except OSError:
        time.sleep(0.05)
"""
DELAYED_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
time.sleep(float(sys.argv[3]))
s.sendall(sys.argv[4].encode().replace(b"|", b"\\r\\n"))
data = b""
try:
    while chunk := s.recv(65536):
        data += chunk
except OSError:
    pass
sys.stdout.write(data.decode("latin-1"))
"""


@pytest.mark.root
@netns
@pytest.mark.parametrize(
    ("method", "delay"), [("GET", 0.8), ("get", 0.0), ("FOO", 0.0)], ids=["delayed-GET", "get", "FOO"]
)
def test_transparent_peers_cannot_be_made_to_trust_a_forged_source(
    method: str, delay: float, pods: PodPair, tmp_path: Path
) -> None:
    client, server = pods.client, pods.server
    record = tmp_path / "app-requests.jsonl"
    server.spawn(
        "app", sys.executable, str(HERE / "desync_backend.py"), "0.0.0.0", str(APP_PORT), str(record)
    )
    server.exec(sys.executable, "-c", APP_LISTENING, str(APP_PORT))
    for pod in (client, server):
        pod.init()
        pod.start_proxy("--detect-timeout", "0.5")
    req = f"{method} /forged HTTP/1.1|Host: web|x-mesh-src: {EVIL}|Connection: close||"
    out = client.exec(
        sys.executable, "-c", DELAYED_CLIENT, server.ip, str(APP_PORT), str(delay), req, timeout=20
    ).stdout
    seen = [Seen.from_json(line) for line in record.read_text().splitlines()] if record.exists() else []
    samples = server.samples("request_total") + server.samples("response_total")
    assert not [s for s in samples if any("evil" in v for v in s.values())], samples
    assert "x-mesh-" not in out.lower(), f"the client app saw a mesh header: {out[:300]}"
    if method == "GET":  # HTTP, only late: the app sees no mesh header and the client its own answer
        assert [r.target for r in seen] == ["/forged"], "the delayed request reached the app once"
        assert all(r.mesh_headers() == [] for r in seen), "the server app saw a mesh header"
        assert out.startswith("HTTP/1.1 200") and out.endswith("req-1 GET /forged"), out[:300]
    # get/FOO are not HTTP to either side: relayed as bytes, which no proxy may rewrite


# === Findings of an adversarial read of the rewrite (fixed in 6ea54ff) ==========================
def mentioning(proxy: ProxyProcess, word: str) -> list[Sample]:
    """Samples with a label value that contains `word`."""
    return [s for s in all_samples(proxy) if any(word in v for v in s.labels.values())]


def failures(proxy: ProxyProcess) -> list[Sample]:
    """response_total samples that name an error."""
    return [s for s in proxy.samples("response_total") if "error" in s.labels and s.value]


def read_body(c: Client, size: int) -> tuple[int, str]:
    """After `head()`: read a Content-Length body of `size` bytes; (bytes received, sha256)."""
    digest = hashlib.sha256(c.buf[:size])
    received, c.buf = len(c.buf[:size]), c.buf[size:]
    with contextlib.suppress(OSError):
        while received < size:
            piece = c.sock.recv(min(1 << 20, size - received))
            if not piece:
                break
            digest.update(piece)
            received += len(piece)
    return received, digest.hexdigest()


class Holder(LoopbackServer):
    """An upstream that accepts connections and holds them: it never reads, sends or closes
    (an app that does not close on a half-close)."""


class EgressProxy(LoopbackServer):
    """A tiny HTTP egress proxy (as squid): `CONNECT` → `200 Connection established` (plus
    `framing`), then echoes every byte; any other request → 200 naming it and its connection.
    Records, per connection, each head's first line and each tunnelled read."""

    def __init__(self, framing: bytes) -> None:
        self.framing = framing
        self.heads: list[tuple[int, bytes]] = []  # (connection, request line)
        self.tunnelled: list[tuple[int, bytes]] = []  # (connection, bytes read inside a tunnel)
        super().__init__()

    def connected(self, sock: socket.socket, n: int) -> None:
        threading.Thread(target=self._serve, args=(sock, n), daemon=True).start()

    def _serve(self, sock: socket.socket, conn: int) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                line = head.split(b"\r\n")[0]
                self.heads.append((conn, line))
                if line.startswith(b"CONNECT "):
                    sock.sendall(b"HTTP/1.1 200 Connection established\r\n" + self.framing + b"\r\n")
                    while data := buf or sock.recv(65536):
                        buf = b""
                        self.tunnelled.append((conn, data))
                        sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                    return
                body = b"egress %d %s" % (conn, line)
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


# --- sendmsg takes at most IOV_MAX buffers -------------------------------------------------------
def test_a_body_of_many_small_chunks_in_one_write_crosses_whole(
    backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    count, size = 2000, 100  # one read of them becomes far more than 1024 pieces to send
    total = count * size
    data = b"".join(pattern(total))

    backend.body_size, backend.chunk_size = total, size  # the answer: head and 2000 chunks in one write
    down = request(server.inbound, "GET", "/chunks", "web")
    assert down.status == 200 and down.header("x-seen") == "1", down.headers
    assert (len(down.body), hashlib.sha256(down.body).hexdigest()) == (total, pattern_digest(total))

    backend.body_size = None
    c = Client(server.inbound)
    c.send(b"POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n")
    time.sleep(0.3)  # the head goes first: the body is streamed by the request pump
    c.send(chunked_body(data, size))
    up = c.reply("POST")
    c.close()
    seen = assert_own(up, backend, "POST", "/upload")
    assert (len(seen.body), seen.body == data) == (total, True), "the upload reached the app cut or changed"
    assert backend.targets() == ["/chunks", "/upload"]
    assert server.value("request_total") == 2
    assert server.value("response_total", classification="success", status_code="200") == 2
    assert failures(server) == []
    assert_settled(server, fd_base)


# --- a client silent past the idle timeout is closed, never relayed unparsed ----------------------
FORGED_ADMIN = "kube-system/deployment/admin/admin-0"


@pytest.mark.slow
def test_a_client_silent_past_the_idle_timeout_cannot_forge_the_source(
    backend: DesyncBackend, server: ProxyProcess, tmp_path: Path
) -> None:
    # A (the client's sidecar, a listener with a destination) → B (`server`) → the backend.
    a = start_proxy(
        tmp_path,
        "--inbound-forward", f"127.0.0.1:{server.inbound}",
        "--detect-timeout", "0.3", "--idle-timeout", "2",
        identity=CLIENT_ID,
    )  # fmt: skip
    try:
        a_fds, b_fds = a.fd_count(), server.fd_count()
        c = Client(a.inbound)
        time.sleep(0.3 + 2 + 0.7)  # past A's detect timeout, then past its idle timeout
        with contextlib.suppress(OSError):
            c.send(f"GET / HTTP/1.1\r\nHost: web\r\nx-mesh-src: {FORGED_ADMIN}\r\n\r\n".encode())
        c.closed(2.0)
        c.close()
        assert b"x-mesh-" not in c.buf.lower(), f"the client learnt the server's identity: {c.buf[:300]!r}"
        seen = backend.settled()
        assert all(r.mesh_headers() == [] for r in seen), "the app saw a mesh header"
        assert [
            s for s in server.samples("request_total") if s.labels.get("src_namespace") == "kube-system"
        ] == []
        assert mentioning(server, "kube-system") == [] and mentioning(a, "kube-system") == []
        assert_settled(server, b_fds)
        assert_settled(a, a_fds)
    finally:
        a.stop()


# --- pipelined tiny requests are parsed no further than one message ahead -------------------------
@pytest.mark.slow
def test_bursts_of_tiny_pipelined_requests_keep_memory_bounded(
    backend: DesyncBackend, tmp_path: Path
) -> None:
    proxy = start_proxy(
        tmp_path,
        "--inbound-forward", f"127.0.0.1:{backend.port}", "--response-timeout", "10",
        identity=SERVER_ID, rlimit_nofile=4096,
    )  # fmt: skip
    clients: list[Client] = []
    try:
        fd_base, rss_base = proxy.fd_count(), proxy.rss_kib()
        backend.answer_delay = 2.5  # slow: the proxy waits on each connection's first answer

        def one(conn: int, i: int) -> bytes:
            return f"GET /{conn}/{i} HTTP/1.1\r\nHost: web\r\n".encode() + b"a:\r\n" * 90 + b"\r\n"

        per_burst = 65536 // len(one(999, 999))  # ~165 requests of ~400 bytes: one 64 KiB burst
        for conn in range(150):
            c = Client(proxy.inbound, timeout=10)
            c.send(b"".join(one(conn, i) for i in range(per_burst)))
            clients.append(c)
        peak = rss_base
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            peak = max(peak, proxy.rss_kib())
            time.sleep(0.02)
        growth_mib = (peak - rss_base) / 1024
        assert growth_mib < 40, f"RSS grew {growth_mib:.0f} MiB for 150 bursts of 64 KiB"

        backend.answer_delay = 0.0
        for c in clients[2:]:
            c.close()
        for conn in (0, 1):  # every request answered, in order, each with its own response
            for i in range(per_burst):
                assert_own(clients[conn].reply(), backend, "GET", f"/{conn}/{i}")
        assert proxy.value("response_total", classification="success", status_code="200") >= 2 * per_burst
        assert proxy.value("response_total", error="timeout") == 0
        for c in clients[:2]:
            c.close()
        assert_settled(proxy, fd_base, slack=64 + 10)  # up to 64 idle pooled upstream connections
    finally:
        for c in clients:
            c.close()
        proxy.stop()


# --- the request pump's end never arms a deadline on a response blocked on the client -------------
@pytest.mark.slow
def test_a_body_sent_late_never_times_out_a_download_paused_by_the_client(
    backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    size = 64 * MIB
    backend.body_size, backend.answer_before_body = size, True  # the download starts before the body
    c = Client(server.inbound, timeout=10)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.send(b"POST /download HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\n")
    time.sleep(0.3)
    c.send(b"hello")  # the pump ends here, while the response waits on the client
    time.sleep(5.0)  # the client reads nothing for longer than the 2 s response timeout
    head = c.head()
    assert head.status == 200 and head.header("content-length") == str(size), head
    received, digest = read_body(c, size)
    c.close()
    assert received == size, f"download cut at {received} of {size} bytes"
    assert digest == pattern_digest(size)
    seen = backend.settled()
    assert [(r.method, r.target, r.body) for r in seen] == [("POST", "/download", b"hello")]
    assert server.value("response_total", error="timeout") == 0, "a client's pause blamed on the upstream"
    assert server.value("response_total", classification="success", status_code="200") == 1
    assert failures(server) == []
    assert_settled(server, fd_base)


# --- an upgrade offer with a body goes on as a plain request --------------------------------------
def test_an_h2c_upgrade_offer_with_a_body_is_served_as_http1(
    backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    c = Client(server.inbound)
    c.send(
        b"POST /form HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 11\r\n\r\nhello=world"
        b"GET /next HTTP/1.1\r\nHost: web\r\n\r\n"  # as `curl --http2 -d`, and one more behind it
    )
    post, after = c.reply("POST"), c.reply()
    c.close()
    seen = assert_own(post, backend, "POST", "/form")
    assert seen.body == b"hello=world"
    assert seen.header("upgrade") is None and seen.header("http2-settings") is None, seen.headers
    assert "upgrade" not in (seen.header("connection") or "").lower()
    assert_own(after, backend, "GET", "/next")
    assert backend.targets() == ["/form", "/next"]
    assert server.value("response_total", classification="success", status_code="200") == 2
    assert failures(server) == []
    assert_settled(server, fd_base)


# --- CONNECT on a listener with a destination ---------------------------------------------------
@pytest.mark.parametrize("framing", [b"", b"Content-Length: 0\r\n"], ids=["no-length", "length-0"])
def test_connect_to_an_egress_proxy_tunnels_and_is_never_pooled(framing: bytes, tmp_path: Path) -> None:
    egress = EgressProxy(framing)
    proxy = start_proxy(
        tmp_path,
        "--inbound-forward",
        f"127.0.0.1:{egress.port}",
        "--response-timeout",
        "2",
        identity=SERVER_ID,
    )
    try:
        fd_base = proxy.fd_count()
        c = Client(proxy.inbound)
        c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        opened = c.reply("CONNECT")
        assert opened.status == 200 and opened.header("transfer-encoding") is None, opened
        sent = []
        for n in range(3):  # both ways, unparsed
            data = b"\x16\x03\x01 client-hello %d" % n
            c.send(data)
            sent.append(data)
            assert c._exact(len(data)) == data
        # Other clients, while the tunnel is open and after: their own upstream connections.
        other = request(proxy.inbound, "GET", "/other", "web")
        c.close()
        time.sleep(0.2)
        later = request(proxy.inbound, "GET", "/later", "web")
        [tunnel_conn] = [n for n, line in egress.heads if line.startswith(b"CONNECT ")]
        assert {n for n, _ in egress.tunnelled} == {tunnel_conn}
        assert b"".join(d for _, d in egress.tunnelled) == b"".join(sent), "a request went into the tunnel"
        gets = [(n, line) for n, line in egress.heads if n != tunnel_conn]
        assert [line for _, line in gets] == [b"GET /other HTTP/1.1", b"GET /later HTTP/1.1"], egress.heads
        for reply, (n, line) in zip((other, later), gets, strict=True):
            assert (reply.status, reply.body) == (200, b"egress %d %s" % (n, line))
        assert proxy.value("response_total", classification="success", status_code="200") == 3
        assert failures(proxy) == []
        assert_settled(proxy, fd_base)
    finally:
        proxy.stop()
        egress.stop()


def test_a_refused_connect_never_lets_the_bytes_after_it_reach_the_app(
    backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    c = Client(server.inbound)
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + SMUGGLED)
    refused = c.reply("CONNECT")
    closed = c.closed(2.0)
    c.close()
    assert refused.status == 405 and refused.body == b"req-1 CONNECT example.com:443", refused
    assert closed, "the connection stays open after a refused CONNECT"
    assert not c.buf, f"more than one response: {c.buf[:200]!r}"
    assert [(r.method, r.target) for r in backend.settled()] == [("CONNECT", "example.com:443")]
    assert all(r.mesh_headers() == [] for r in backend.seen())
    assert forged(server) == []
    assert server.value("response_total", status_code="405") == 1
    assert server.value("request_total") == 1
    assert_settled(server, fd_base)


# --- the connection cap holds for a burst from the backlog --------------------------------------
def test_a_backlog_burst_meets_the_connection_cap(backend: DesyncBackend, tmp_path: Path) -> None:
    cap = 10
    proxy = start_proxy(
        tmp_path,
        "--inbound-forward", f"127.0.0.1:{backend.port}", "--max-connections", str(cap),
        "--response-timeout", "1",  # the held requests end soon after their clients have gone
        identity=SERVER_ID, rlimit_nofile=1024,
    )  # fmt: skip
    backend.hang = True  # requests stay in flight: each accepted client holds two descriptors
    socks: list[socket.socket] = []
    try:
        fd_base = proxy.fd_count()
        os.kill(proxy.process.pid, signal.SIGSTOP)  # busy for a moment: connections queue up
        try:
            for _ in range(300):
                socks.append(socket.create_connection(("127.0.0.1", proxy.inbound), timeout=5))
        finally:
            os.kill(proxy.process.pid, signal.SIGCONT)
        peak = proxy.fd_count()
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(b"GET /held HTTP/1.1\r\nHost: web\r\n\r\n")
            peak = max(peak, proxy.fd_count())
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            peak = max(peak, proxy.fd_count())
            time.sleep(0.01)
        assert peak <= fd_base + 2 * cap + 4, f"descriptors {fd_base} → {peak} with --max-connections {cap}"
        assert backend.connections <= cap, f"the backend saw {backend.connections} connections"
        assert len(backend.seen()) <= cap
        assert proxy.value("tcp_open_connections", direction="inbound", peer="src") <= cap
        for s in socks:
            s.close()
        socks.clear()
        backend.hang = False
        assert_settled(proxy, fd_base)
        after = request(proxy.inbound, "GET", "/after", "web")  # the cap's count came back down
        assert_own(after, backend, "GET", "/after")
    finally:
        for s in socks:
            s.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proxy.process.pid, signal.SIGCONT)
        proxy.stop()


# --- SIGTERM and a silent client whose upstream never closes ------------------------------------
def test_sigterm_does_not_wait_for_a_silent_client_whose_upstream_stays_open(tmp_path: Path) -> None:
    holder = Holder()
    proxy = start_proxy(
        tmp_path,
        "--inbound-forward", f"127.0.0.1:{holder.port}",
        "--detect-timeout", "0.3", "--shutdown-grace", "8",
        identity=SERVER_ID,
    )  # fmt: skip
    c = Client(proxy.inbound)
    try:
        until = time.monotonic() + 3
        while not holder.socks and time.monotonic() < until:  # past the detect timeout: connected
            time.sleep(0.02)
        assert len(holder.socks) == 1, "the proxy did not connect the upstream of a silent client"
        time.sleep(0.3)
        start = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proxy.process.wait(3)
        took = time.monotonic() - start
        rc = proxy.process.poll()
        assert rc == 0 and took < 2.0, f"exit {rc} after {took:.1f} s (grace 8 s) with a silent client"
        assert "drained=True" in proxy.log()
        assert c.closed(1.0) and c.buf == b"", c.buf[:200]
        upstream = holder.socks[0]
        upstream.settimeout(1.0)
        assert upstream.recv(65536) == b"", "the upstream got bytes from a client that sent none"
    finally:
        c.close()
        if proxy.process.poll() is None:
            proxy.process.kill()
            proxy.process.wait()
        holder.stop()


# --- a bad pipelined request after a good one ----------------------------------------------------
def test_a_bad_pipelined_request_does_not_cut_the_good_one_before_it(
    backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    c = Client(server.inbound)
    c.send(b"POST /valid HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\n")
    time.sleep(0.3)  # the body comes later, so the request pump reads it, with the bad request
    c.send(b"hello" + b"GET /next HTTP/1.1\r\nHost: web\r\nContent-Length: x\r\n\r\n")
    post = c.reply("POST")
    bad = c.reply()
    closed = c.closed(2.0)
    c.close()
    seen = assert_own(post, backend, "POST", "/valid")
    assert seen.body == b"hello"
    assert bad.status == 400 and closed, (bad, closed)
    assert backend.targets() == ["/valid"]
    assert server.value("response_total", classification="success", status_code="200") == 1
    assert server.value("response_total", status_code="400") == 1
    assert failures(server) == []
    assert_settled(server, fd_base)


# --- a 101 nobody asked for --------------------------------------------------------------------
def test_an_unasked_switching_protocols_is_a_bad_response(
    backend: DesyncBackend, server: ProxyProcess
) -> None:
    fd_base = server.fd_count()
    backend.status = 101
    backend.extra_headers = [("Upgrade", "x"), ("Connection", "upgrade")]
    c = Client(server.inbound)
    c.send(b"GET /switch HTTP/1.1\r\nHost: web\r\n\r\n")
    c.closed(3.0)
    c.close()
    assert c.buf.startswith(b"HTTP/1.1 502 "), f"the client got {c.buf[:200]!r}"
    assert c.buf.count(b"HTTP/1.") == 1 and b" 101 " not in c.buf, c.buf[:300]
    assert b"req-1" not in c.buf, "bytes after the 101 reached the client"
    assert backend.targets() == ["/switch"], "sent once, never retried"
    assert server.value("response_total", status_code="502", error="bad_response") == 1
    assert server.value("request_total") == 1
    assert_settled(server, fd_base)
