"""HTTP/1.1 for a proxy, without sockets (the sans-IO idea of h11).

`RequestReader`/`ResponseReader` turn bytes into events using llhttp (via httptools):
(HEAD, head), (BODY, bytes), (END, trailer fields or None), (UPGRADE, leftover bytes). The functions below
decide what a proxy forwards: hop-by-hop headers (RFC 9110 §7.6.1) are dropped, the mesh's
identity headers are stripped and re-set, bodies are re-framed for the next hop (RFC 9112 §6).
Nothing here touches a socket, so every rule is unit-tested with plain bytes.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import httptools

from kubectl_mesh.contract import DST_HEADER, SRC_HEADER, VIA_HEADER

HEAD, BODY, END, UPGRADE = 0, 1, 2, 3
Event = tuple[int, Any]

MAX_HEADER_BYTES = 32 * 1024  # total of names and values; more → 431
MAX_HEADERS = 100  # more → 431
MAX_TARGET_BYTES = 8 * 1024  # request target; more → 414
# httptools buffers a header line until it ends, so one endless line would grow without bound:
# bytes fed while a head is still open are capped too (with slack for one read's overcount).
MAX_OPEN_HEAD_BYTES = MAX_HEADER_BYTES + MAX_TARGET_BYTES + 64 * 1024
FEED_SLICE = 1024  # request bytes parsed at a time outside a body (see RequestReader)
CHUNKED_FEED_SLICE = 16384  # and inside a chunked body

MESH_SRC = SRC_HEADER.encode()
MESH_DST = DST_HEADER.encode()
MESH_VIA = VIA_HEADER.encode()
MESH_HEADERS = frozenset({MESH_SRC, MESH_DST, MESH_VIA})
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade", b"proxy-authenticate", b"proxy-authorization",
    }
)  # fmt: skip
_RECORDED = frozenset({b"host", b"content-length", b"expect"})
_SPECIAL = HOP_BY_HOP | MESH_HEADERS | _RECORDED
_CONNECTION_OPTIONS_KEPT = frozenset({b"close", b"keep-alive", b"upgrade"})
# A Connection option never removes what frames the message or names its target: that is how
# `Connection: content-length` once smuggled a body past the proxy as a second request.
_NEVER_CONNECTION_OPTIONS = frozenset({b"host", b"content-length", b"transfer-encoding"})

# Body modes of a message.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3

REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    508: b"Loop Detected",
}


class ProtocolError(Exception):
    """The peer sent something that is not HTTP/1.x we can forward; `status` is our answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Head:
    """The parts of a request or response head a proxy acts on; `headers` are end-to-end only."""

    __slots__ = (
        "body_mode",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "mesh",
        "method",
        "reason",
        "status",
        "target",
        "te_trailers",
        "transfer_encoding",
        "upgrade",
        "version",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.status = 0
        self.reason = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.upgrade: bytes | None = None  # the Upgrade header's value when the peer asks to switch
        self.transfer_encoding: bytes | None = None
        self.content_length: int | None = None  # as parsed (llhttp checked it); written anew
        self.host: bytes | None = None
        self.expect_continue = False
        self.te_trailers = False  # the client accepts trailers (`TE: trailers`, hop-by-hop)
        self.mesh: dict[bytes, bytes] = {}  # identity headers the peer sent (x-mesh-src/x-mesh-dst)
        self.body_mode = NO_BODY


def split_headers(raw: list[tuple[bytes, bytes]], head: Head) -> None:
    """Fill `head.headers` with the end-to-end headers of `raw`; record the ones a proxy acts on.

    Drops hop-by-hop headers, the headers the Connection header names (never Host or framing),
    the mesh's headers (kept aside in `head.mesh`, never forwarded as the peer sent them), and
    Content-Length, which the encoder writes from the parsed value (framing comes from state).
    """
    kept: list[tuple[bytes, bytes]] = []
    connection_options: list[bytes] = []
    upgrade = None
    for name, value in raw:
        lname = name.lower()
        if lname not in _SPECIAL:
            kept.append((name, value))
        elif lname == b"host":
            head.host = value.strip()
            kept.append((name, value))
        elif lname == b"content-length":
            # llhttp refused anything but digits, and a second, different value; one is written.
            head.content_length = int(value.strip() or b"0")
        elif lname == b"expect":
            if value.strip().lower() == b"100-continue":
                head.expect_continue = True
            kept.append((name, value))
        elif lname in MESH_HEADERS:
            head.mesh[lname] = value
        elif lname == b"connection":
            connection_options.extend(t.strip().lower() for t in value.split(b","))
        elif lname == b"transfer-encoding":
            te = value.strip()
            previous = head.transfer_encoding
            head.transfer_encoding = te if previous is None else previous + b", " + te
        elif lname == b"upgrade":
            upgrade = value.strip()
        elif lname == b"te":
            head.te_trailers = head.te_trailers or b"trailers" in value.lower()
    if head.transfer_encoding is not None:  # written again from what it means: codings, in order
        codings = [c.strip().lower() for c in head.transfer_encoding.split(b",")]
        head.transfer_encoding = b", ".join(c for c in codings if c and c != b"identity") or None
    if upgrade is not None and b"upgrade" in connection_options:
        head.upgrade = upgrade
    extra = [o for o in connection_options if o and o not in _CONNECTION_OPTIONS_KEPT]
    extra = [o for o in extra if o not in _NEVER_CONNECTION_OPTIONS]
    if extra:
        named = frozenset(extra)
        kept = [(n, v) for n, v in kept if n.lower() not in named]
    head.headers = kept


def is_informational(status: int) -> bool:
    """1xx: more responses follow for the same request (RFC 9110 §15.2)."""
    return 100 <= status < 200


def is_chunked(transfer_encoding: bytes | None) -> bool:
    if transfer_encoding is None:
        return False
    return transfer_encoding.lower().rsplit(b",", 1)[-1].strip() == b"chunked"


class _Reader:
    """Shared callback plumbing: llhttp calls these, they append events."""

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self._raw: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._limit_error: ProtocolError | None = None
        self._in_head = False
        self._head_fed = 0
        self._trailers: list[tuple[bytes, bytes]] = []
        self._framing_fed = 0  # bytes fed past the head since the last body data (chunk lines, trailers)
        self._body_in_feed = False

    def on_message_begin(self) -> None:
        self._raw = []
        self._trailers = []
        self._framing_fed = 0
        self._header_bytes = 0
        self._in_head = True
        self._head_fed = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES or len(self._raw) + len(self._trailers) >= MAX_HEADERS:
            self._limit_error = ProtocolError(431, "header section too large")
            raise self._limit_error
        if self._in_head:
            self._raw.append((name, value))
        else:  # after a chunked body: a trailer field (the same limits apply)
            self._trailers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body_in_feed = True
        self.events.append((BODY, body))

    def _feed(self, parser: Any, data: bytes) -> None:
        self._body_in_feed = False
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.events.append((UPGRADE, data[upgrade.args[0] :]))
        except httptools.HttpParserError as error:
            if self._limit_error is not None:
                raise self._limit_error from None
            raise ProtocolError(400, str(error) or "malformed message") from None
        if self._in_head:
            self._head_fed += len(data)
            if self._head_fed > MAX_OPEN_HEAD_BYTES:
                raise ProtocolError(431, "header section too large")
        else:
            # Chunk-size lines (with extensions) and trailer lines are buffered by httptools until
            # they end, like a head: reads that bring no body data are capped the same way.
            self._framing_fed = 0 if self._body_in_feed else self._framing_fed + len(data)
            if self._framing_fed > MAX_OPEN_HEAD_BYTES:
                raise ProtocolError(431, "chunk framing or trailer section too large")


class RequestReader(_Reader):
    """Bytes from a client → request events. Pipelined requests queue up in order, but never far.

    Parsing stops (at most one slice) past the end of a message while its events still wait to
    be taken: the rest stays unparsed in `backlog` until `resume()`. Heads are parsed a slice at
    a time, so one read full of tiny pipelined requests never turns into hundreds of parsed
    heads (each far larger in memory than its bytes). A Content-Length body is parsed whole.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parser = httptools.HttpRequestParser(self)
        self._target: list[bytes] = []
        self._target_bytes = 0
        self._between = True  # no message begun since the last one ended
        self._completed = 0  # messages ended so far
        self.pending_error: ProtocolError | None = None  # of a later request: raised when it is due
        self._body_left = 0  # bytes of a Content-Length body still to come
        self.backlog: bytes | memoryview = b""

    @property
    def head_started(self) -> bool:
        """Bytes of a request head arrived, and the head is not complete yet."""
        return self._in_head

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises ProtocolError (status 400/414/431) on input that is not forwardable."""
        if self.pending_error is not None:
            raise self.pending_error
        if self.backlog:  # keep the order: behind what is waiting
            self.backlog = bytes(self.backlog) + data
            return
        self._parse(data if len(data) <= FEED_SLICE else memoryview(data))

    @property
    def held(self) -> bool:
        """Something waits for `resume()`: bytes held back, or the error of a later request."""
        return bool(self.backlog) or self.pending_error is not None

    def resume(self) -> None:
        """Parse what was held back, once the events before it have been taken."""
        if self.pending_error is not None:
            raise self.pending_error
        data, self.backlog = self.backlog, b""
        if data:
            self._parse(data)

    def _parse(self, data: bytes | memoryview) -> None:
        pos, end = 0, len(data)
        first = self._completed
        while pos < end:  # every piece is at least one byte
            if self._between or self._in_head:
                size = FEED_SLICE
            elif self._body_left > 0:  # a Content-Length body: up to its end, in one piece
                size = self._body_left
            else:  # a chunked body (its end is not known) or a trailer section
                size = CHUNKED_FEED_SLICE
            piece = data[pos : pos + size]
            pos += len(piece)
            completed = self._completed
            try:
                self._feed(self._parser, piece)  # type: ignore[arg-type]
            except ProtocolError as error:
                if self._completed == completed:
                    raise
                self.pending_error = error  # the request before it is whole: it goes first
                return
            if self.events and self.events[-1][0] == UPGRADE:
                self._upgraded(data[pos:])
                return
            if pos < end and self.events and self._completed != first:
                self.backlog = data[pos:]  # a whole message waits to be taken: no further ahead
                return

    def _upgraded(self, rest: bytes | memoryview) -> None:
        """llhttp stopped at a request that asks to switch protocols; the bytes after its head
        are the new protocol's. Unless the switch is declined: a request with a body, or one that
        offers `h2c` anywhere in its list (the proxy keeps HTTP/1.1 on the next hop, as Linkerd
        does), goes on as a plain request,
        its body read by its own framing, and parsing resumes behind it on a fresh parser."""
        _, left = self.events.pop()
        left = bytes(left) + bytes(rest)
        head = next(h for k, h in reversed(self.events) if k == HEAD)
        if head.method == b"CONNECT" or head.upgrade is None:
            self.events.append((UPGRADE, left))
            return
        if head.body_mode == NO_BODY and not offers_h2c(head.upgrade):
            self.events.append((UPGRADE, left))
            return
        head.upgrade = None
        self._parser = httptools.HttpRequestParser(self)
        if head.body_mode != NO_BODY:
            self.events.pop()  # llhttp ended the message at its head; its body comes next
            framing = (
                b"Transfer-Encoding: chunked"
                if head.body_mode == CHUNKED
                else b"Content-Length: %d" % (head.content_length or 0)
            )
            self._feed(self._parser, b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
            self.events.pop()  # that head only set the parser up for the body
        self._between = head.body_mode == NO_BODY
        if left:
            self._parse(left)

    def on_body(self, body: bytes) -> None:
        self._body_in_feed = True
        self._body_left -= len(body)
        self.events.append((BODY, body))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._between = False
        self._body_left = 0
        self._target = []
        self._target_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._target_bytes += len(url)
        if self._target_bytes > MAX_TARGET_BYTES:
            self._limit_error = ProtocolError(414, "request target too long")
            raise self._limit_error
        self._target.append(url)

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self._parser
        head = Head()
        head.method = p.get_method()
        head.target = b"".join(self._target)
        head.version = p.get_http_version()
        if head.version not in ("1.0", "1.1"):  # llhttp reads `GET  HTTP/1.0` as HTTP/0.9
            self._limit_error = ProtocolError(400, "only HTTP/1.0 and HTTP/1.1 requests")
            raise self._limit_error
        head.keep_alive = p.should_keep_alive()
        split_headers(self._raw, head)
        if is_chunked(head.transfer_encoding):
            head.body_mode = CHUNKED
        elif head.content_length:
            head.body_mode = LENGTH
            self._body_left = head.content_length
        self.events.append((HEAD, head))

    def on_message_complete(self) -> None:
        self._between = True
        self._completed += 1
        self.events.append((END, self._trailers or None))


class ResponseReader(_Reader):
    """Bytes from an upstream → response events, for one request at a time.

    Call `start(method)` before each request: a response to HEAD has no body whatever its
    headers say, which llhttp cannot be told, so the parser is replaced after such a response.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._head_request = False
        self._dirty = False
        self._mode = NO_BODY
        self._in_body = False
        self._complete = False
        self.broken = False  # junk followed a complete response: the connection must not be reused

    def start(self, method: bytes) -> None:
        if self._dirty:
            self._parser = httptools.HttpResponseParser(self)
            self._dirty = False
        self._head_request = method == b"HEAD"
        self._in_body = False
        self._complete = False

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises ProtocolError (502 for the client) on a malformed response.

        Bytes after a complete response (a 204 with a body, say) do not spoil that response;
        they only mark the connection `broken`.
        """
        try:
            self._feed(self._parser, data)
        except ProtocolError as error:
            if self._complete:
                self.broken = True
                return
            raise ProtocolError(502, "malformed response: " + error.reason) from None

    def clean(self) -> bool:
        """Nothing is left over from the last response: no parsed event, no byte of a next message.

        Only then may the connection carry another request; else the next client could read
        what this one's upstream sent (a second response, stray bytes).
        """
        return not self.events and not self.broken and not self._in_head and not self._in_body

    def eof(self) -> bool:
        """The upstream closed: True if that ends the current response (close-delimited body)."""
        if self._in_body and self._mode == UNTIL_CLOSE:
            self._in_body = False
            self.events.append((END, None))
            return True
        return False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self._parser
        head = Head()
        head.status = status = p.get_status_code()
        head.reason = self._reason
        head.version = p.get_http_version()
        head.keep_alive = p.should_keep_alive()
        split_headers(self._raw, head)
        informational = 100 <= status < 200  # is_informational, inline: once per response
        if informational or status in (204, 304) or self._head_request:
            head.body_mode = NO_BODY
        elif is_chunked(head.transfer_encoding):
            head.body_mode = CHUNKED
        elif head.content_length is not None:
            head.body_mode = LENGTH if head.content_length else NO_BODY
        else:
            head.body_mode = UNTIL_CLOSE
            head.keep_alive = False
        self._mode = head.body_mode
        self.events.append((HEAD, head))
        if not informational:  # llhttp too takes 0xx for a final response
            self._in_body = True
            if self._head_request:
                self._dirty = True
                self._in_body = False
                self._complete = True
                self.events.append((END, None))

    def on_body(self, body: bytes) -> None:
        self._body_in_feed = True
        if self._in_body:
            self.events.append((BODY, body))

    def on_message_complete(self) -> None:
        if self._in_body:  # 1xx and HEAD responses were completed already
            self._in_body = False
            self._complete = True
            self.events.append((END, self._trailers or None))


# --- What goes on the wire to the next hop ---------------------------------------------------


def encode_request_head(head: Head, target: bytes, extra: list[tuple[bytes, bytes]]) -> bytes:
    """The request line and headers for the upstream: always HTTP/1.1, end-to-end headers + extra."""
    parts = [head.method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in head.headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def request_framing(head: Head) -> list[tuple[bytes, bytes]]:
    """Hop-by-hop headers the proxy itself must send upstream for this request."""
    extra: list[tuple[bytes, bytes]] = []
    if head.body_mode == CHUNKED:
        extra.append((b"Transfer-Encoding", head.transfer_encoding or b"chunked"))
    elif head.content_length is not None:
        extra.append((b"Content-Length", b"%d" % head.content_length))
    options = []
    if head.upgrade is not None:
        options.append(b"upgrade")
        extra.append((b"Upgrade", head.upgrade))
    if head.te_trailers and head.version != "1.0":
        # The proxy forwards trailers to an HTTP/1.1 client, so it may ask for them on its behalf
        # (RFC 9110 §10.1.4: TE is hop-by-hop and named in Connection).
        options.append(b"te")
        extra.append((b"TE", b"trailers"))
    if options:
        extra.append((b"Connection", b", ".join(options)))
    return extra


def encode_response_head(
    head: Head, client_version: str, keep_alive: bool, chunked: bool, extra: list[tuple[bytes, bytes]]
) -> bytes:
    """The status line and headers for the client, with the framing the proxy chose."""
    parts = [b"HTTP/1.1 ", str(head.status).encode(), b" ", head.reason, b"\r\n"]
    for name, value in head.headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None and not 100 <= head.status < 200 and head.status != 204:
        parts.append(b"Content-Length: %d\r\n" % head.content_length)
    if head.status == 101 and head.upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
    elif not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif client_version == "1.0":
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def response_plan(head: Head, client_version: str) -> tuple[bool, bool]:
    """(send chunked to the client, keep the client connection) for a final response.

    Chunked and close-delimited bodies reach an HTTP/1.1 client chunked, so its connection
    survives; an HTTP/1.0 client cannot read chunks and gets a close-delimited body instead.
    """
    if head.body_mode in (CHUNKED, UNTIL_CLOSE):
        if client_version == "1.1":
            return True, True
        return False, False
    return False, True


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class ChunkedWriter:
    """A body re-framed as chunks for the next hop (h11's writers: framing lives here, not in I/O).

    Writers append pieces to the caller's list, never joining them: a big piece goes to the
    socket as it came from the parser (scatter/gather send), with no copy.
    """

    __slots__ = ()

    def write(self, data: bytes, out: list[bytes]) -> None:
        out += (b"%x\r\n" % len(data), data, b"\r\n")

    def end(self, trailers: list[tuple[bytes, bytes]] | None, out: list[bytes]) -> None:
        out.append(last_chunk(trailers))


class PlainWriter:
    """A body sent as it is: framed by Content-Length, or by closing the connection."""

    __slots__ = ()

    def write(self, data: bytes, out: list[bytes]) -> None:
        out.append(data)

    def end(self, trailers: list[tuple[bytes, bytes]] | None, out: list[bytes]) -> None:
        pass  # trailers cannot travel without chunks (RFC 9112 §7.1.2): they are dropped


BodyWriter = ChunkedWriter | PlainWriter
CHUNKED_WRITER = ChunkedWriter()
PLAIN_WRITER = PlainWriter()


def body_writer(chunked: bool) -> BodyWriter:
    return CHUNKED_WRITER if chunked else PLAIN_WRITER


def last_chunk(trailers: list[tuple[bytes, bytes]] | None) -> bytes:
    """The end of a chunked body, carrying the trailer fields a proxy may forward (RFC 9112 §7.1.2).

    Hop-by-hop, framing and mesh fields are dropped, as they would be from a header section.
    """
    if not trailers:
        return LAST_CHUNK
    kept = [b"%b: %b\r\n" % (name, value) for name, value in trailers if name.lower() not in _SPECIAL]
    return b"0\r\n" + b"".join(kept) + b"\r\n"


# RFC 9110 §9.2.2: a request with one of these methods may be sent again after a failure.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
MAX_HOPS = 16  # proxies one request may pass through before it is taken for a loop


def offers_h2c(upgrade: bytes) -> bool:
    """Whether an Upgrade field offers h2c anywhere in its list: a server may switch to any
    protocol offered (Go's h2c does), and after a switch the bytes are relayed unparsed, so an
    HTTP/2 stream would reach the app with whatever mesh fields its client wrote."""
    return any(token.strip().split(b"/")[0].lower() == b"h2c" for token in upgrade.split(b","))


def via_loops(via: bytes | None, own_id: bytes) -> bool:
    """True if the hop marker shows this proxy already forwarded the request (or too many did)."""
    if not via:
        return False
    hops = [hop.strip() for hop in via.split(b",")]
    return own_id in hops or len(hops) >= MAX_HOPS


def via_add(via: bytes | None, own_id: bytes) -> bytes:
    return own_id if not via else via + b"," + own_id


def outbound_mesh_fields(
    identity: bytes | None, via: bytes | None, own_id: bytes
) -> list[tuple[bytes, bytes]]:
    """The mesh fields a client-side proxy sets on every request it forwards, HTTP/1 or HTTP/2.

    Whatever the app sent under these names was stripped (`split_headers`, `strip_mesh`): its
    identity is this proxy's, never the app's (see Trust in docs/architecture.md).
    """
    fields = [(MESH_SRC, identity)] if identity is not None else []
    fields.append((MESH_VIA, via_add(via, own_id)))
    return fields


def strip_mesh(fields: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], dict[bytes, bytes]]:
    """(the fields without the mesh's, the mesh fields the peer sent): the rule of `split_headers`
    for a header list that needs nothing else done (HTTP/2, where hop-by-hop fields are illegal)."""
    kept: list[tuple[bytes, bytes]] = []
    mesh: dict[bytes, bytes] = {}
    for name, value in fields:
        lname = name.lower()
        if lname in MESH_HEADERS:
            mesh[lname] = value
        else:
            kept.append((name, value))
    return kept, mesh


def error_response(
    status: int, extra: list[tuple[bytes, bytes]] | None = None, close: bool = True, detail: bytes = b""
) -> bytes:
    """A small response the proxy itself answers with (400, 431, 502, 504 …); `detail` says why."""
    reason = REASONS.get(status, b"Error")
    body = (detail or reason) + b"\n"
    parts = [b"HTTP/1.1 %d %b\r\n" % (status, reason), b"Content-Type: text/plain\r\n"]
    parts.append(b"Content-Length: %d\r\n" % len(body))
    for name, value in extra or ():
        parts += (name, b": ", value, b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)


def split_authority(authority: bytes, default_port: int) -> tuple[str, int] | None:
    """`host[:port]` (IPv6 in brackets) → (host, port), or None when it is not a usable address."""
    text = authority.decode("ascii", "replace").strip()
    if not text or any(c in text for c in " /?#@\\"):
        return None
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        return None
    else:
        host, port_text = text, ""
    if not host:
        return None
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def forward_proxy_target(head: Head) -> tuple[tuple[str, int], bytes, bytes] | None:
    """For the explicit outbound mode: ((host, port), origin-form target, authority) or None.

    `http_proxy` clients send the absolute form `http://host:port/path`; others name the
    destination only in Host. `https://` targets are refused: the proxy does not originate TLS.
    """
    target = head.target
    if target[:7].lower() == b"http://":
        rest = target[7:]
        cut = len(rest)
        for sep in (b"/", b"?", b"#"):
            i = rest.find(sep)
            if i != -1 and i < cut:
                cut = i
        authority, path = rest[:cut], rest[cut:]
        if not path.startswith(b"/"):
            path = b"/" + path
        address = split_authority(authority, 80)
        return (address, path, authority) if address else None
    if not target.startswith(b"/") and target != b"*":
        return None
    if head.host is None:
        return None
    address = split_authority(head.host, 80)
    return (address, target, head.host) if address else None
