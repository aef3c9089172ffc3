"""The mesh's rules for HTTP/2 streams, without sockets: what a stream's head means to the mesh.

Framing, HPACK, flow control and stream states are python-hyper's `h2` (sans-IO); h2proxy.py
does the socket I/O. This module maps a stream's header lists to the mesh's decisions: the
fields forwarded (mesh fields stripped and set by the rule HTTP/1 uses, `http1.strip_mesh` and
`http1.outbound_mesh_fields`), the authority and peer a stream is counted under, how a response
is classified (`grpc-status` for gRPC), the answer to a stream the proxy fails itself, and the
budgets that end a flooding connection. Everything here is unit-tested with plain values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from h2.exceptions import ProtocolError
from h2.utilities import CONNECTION_HEADERS, _check_pseudo_header_field_acceptability

from . import http1
from .metrics import grpc_status_label

Fields = list[tuple[bytes, bytes]]

# Our SETTINGS on every connection (both sides). Streams beyond MAX_CONCURRENT_STREAMS are
# refused by h2 (a connection error: the peer ignored our setting); a header list over
# MAX_HEADER_LIST_SIZE (HPACK bombs included: the limit applies to the decoded list) ends the
# connection with ENHANCE_YOUR_CALM; the header table stays at the default 4 KiB.
MAX_CONCURRENT_STREAMS = 100
MAX_HEADER_LIST_SIZE = http1.MAX_HEADER_BYTES  # 32 KiB, as an HTTP/1 head
# Fields per header list (a request's or response's head, its trailers), as an HTTP/1 head's 100.
# Pseudo-fields count, as in Envoy's HTTP/2 codec (its max_headers_count, also 100, counts the
# header map, which holds them): an HTTP/2 request keeps 96 regular fields beside its four.
MAX_HEADER_FIELDS = http1.MAX_HEADERS
# A client's header block still arriving (HEADERS and CONTINUATIONs without END_HEADERS) is held
# encoded by h2 until it is whole, up to 64 CONTINUATIONs: 1 MiB at 16 KiB frames, for the
# header timeout (CVE-2024-27316). A block can be larger than its decoded list only by Huffman's
# longest codes (under 4 bytes a byte) and a few bytes of lengths per field (each field counts 32
# more decoded): one over 4 × MAX_HEADER_LIST_SIZE cannot decode under it, so it ends the
# connection as the list would (header_list_too_large) before it is whole.
MAX_HEADER_BLOCK_BYTES = 4 * MAX_HEADER_LIST_SIZE
STREAM_WINDOW = 65535  # bytes a peer may send on one stream before the proxy passed them on
# The connection window lets every stream fill its own window: a stalled stream never holds
# back the others (the RFC's default of 64 KiB would let one stalled stream block them all).
CONNECTION_WINDOW = MAX_CONCURRENT_STREAMS * STREAM_WINDOW
# An upstream connection carries the streams of many clients, so the same rule sets its window
# from the streams it may carry: a client that reads nothing holds its streams' windows, never
# the window the other clients' streams share (100 such streams once stalled every client of the
# backend). The largest window HTTP/2 allows bounds the streams (32,768); bytes held stay bounded
# by the streams' own windows, as on the client's side.
UPSTREAM_STREAMS = (2**31 - 1) // STREAM_WINDOW
UPSTREAM_CONNECTION_WINDOW = UPSTREAM_STREAMS * STREAM_WINDOW
MAX_STREAM_ID = 2**31 - 1  # stream IDs are never reused: a connection that used them all is done
# The HPACK table the proxy's encoders keep, whatever a peer's SETTINGS_HEADER_TABLE_SIZE allows
# (as nghttp2 and Envoy): a table of the peer's size kept every distinct field sent on the
# connection, for its lifetime (2^31 allowed ~2 GiB per connection).
HEADER_TABLE_SIZE = 4096
# Bytes queued for one socket: above HIGH_WATER no more DATA is queued for it (the streams wait,
# unacknowledged, so their senders' windows close); above MAX_BACKLOG (control frames the peer
# makes us answer while it reads nothing) the connection is ended.
HIGH_WATER = 256 * 1024
MAX_BACKLOG = 4 * 1024 * 1024
# Floods within one second on one connection: PINGs, SETTINGS, and streams the client resets
# before their response began (CVE-2023-44487, "rapid reset": open and cancel streams at once, so
# that the server does the work and the concurrency limit never applies). Beyond a budget:
# GOAWAY ENHANCE_YOUR_CALM.
PING_BUDGET = 100
SETTINGS_BUDGET = 100
RESET_BUDGET = 100
# Empty DATA frames a client sends that do not end their stream (CVE-2019-9518, "empty frames
# flood": they cost no window, so only this bounds the CPU they take). Envoy allows 1 in a row.
EMPTY_FRAME_BUDGET = 100
# WINDOW_UPDATE frames a peer may send over a connection's life, Envoy's rule
# (max_inbound_window_update_frames_per_data_frame_sent, 10): 5 + 2 × (streams opened + 10 ×
# DATA frames sent to it). A peer opens windows as it reads what was sent to it, so a budget per
# second would cut a fast download that acknowledges each frame; thousands of updates a second
# for nothing sent (CPU with nothing to show for it) end the connection: GOAWAY ENHANCE_YOUR_CALM.
WINDOW_UPDATES_PER_DATA_FRAME = 10
# DATA frames a peer's window cuts small (CVE-2019-9511, "data dribble": open a window a byte at a
# time and the proxy sends a frame per byte, each costing what a 16 KiB frame costs). A frame
# counts when the receiver's window (stream or connection) allowed under DRIBBLE_FRAME_BYTES
# while more bytes waited, and it was the first of its stream's turn (the window opened by no
# more: a window's remainder after bigger frames is a normal window's end). A frame small because
# the data is (a small gRPC message, a stream's end) never counts. 512 bytes: real receivers
# reopen windows by far more (h2 by over 1 KiB, Go's x/net/http2 by 4 KiB, nghttp2 and grpc-go by
# a half and a quarter of the window), and h2load's 1,023-byte windows (`-w 10`, a test's real
# client) stay clear by 2x. A connection ends (GOAWAY ENHANCE_YOUR_CALM) past DRIBBLE_BUDGET such
# frames within a second, once they are most of its DATA frames (`dribbling`).
DRIBBLE_FRAME_BYTES = 512
DRIBBLE_BUDGET = 100
# GOAWAY frames that take effect on one connection (RFC 9113 §6.8). A graceful shutdown sends two:
# the first naming 2^31-1, the second the last stream taken (grpc-go's GracefulStop). Each must
# lower the last stream id; one that does not says nothing new (raising it is forbidden) and is
# dropped at no cost. Each that takes effect walks the upstream connection's streams to refuse
# those above it, so their number is bounded: past it, h2's own rule (the connection closes).
GOAWAYS_HONOURED = 4
UPSTREAMS_PER_DESTINATION = 8  # h2 connections to one destination (each up to its peer's streams)

_GRPC = b"application/grpc"
ERROR_LABELS = {
    0x1: "protocol_error", 0x2: "internal_error", 0x3: "flow_control_error", 0x4: "settings_timeout",
    0x5: "stream_closed", 0x6: "frame_size_error", 0x7: "refused_stream", 0x8: "cancel",
    0x9: "compression_error", 0xA: "connect_error", 0xB: "enhance_your_calm",
    0xC: "inadequate_security", 0xD: "http_1_1_required",
}  # fmt: skip


def extended_connect(head: RequestHead) -> bool:
    """A request with `:protocol` (RFC 8441's extended CONNECT, for WebSockets over HTTP/2)."""
    return any(name == b":protocol" for name, _ in head.fields)


def upstream_has_room(streams: int, peer_limit: int, highest_stream_id: int) -> bool:
    """Whether an upstream connection takes one more stream: under the peer's limit and ours,
    with a stream ID left (a client's IDs are odd: the next is the highest + 2)."""
    return streams < min(peer_limit, UPSTREAM_STREAMS) and highest_stream_id + 2 <= MAX_STREAM_ID


def too_many_fields(headers: Any) -> bool:
    """A client's header list over MAX_HEADER_FIELDS, a `cookie` split in crumbs counted once: RFC 9113
    §8.2.3 lets a client split it (browsers do, for HPACK), and it is the one `Cookie` field of
    HTTP/1, one field in Envoy's codec too. Counted only past the plain length (a lean path)."""
    count = len(headers)
    if count <= MAX_HEADER_FIELDS:
        return False
    crumbs = sum(1 for field in headers if field[0] == b"cookie")
    return count - max(crumbs - 1, 0) > MAX_HEADER_FIELDS


def window_updates_allowed(streams_opened: int, data_frames_sent: int) -> int:
    """The WINDOW_UPDATE frames a connection's peer may have sent so far (Envoy's formula)."""
    return 5 + 2 * (streams_opened + WINDOW_UPDATES_PER_DATA_FRAME * data_frames_sent)


def dribbling(dribbled_frames: int, data_frames_sent: int) -> bool:
    """Whether a connection's window-cut small DATA frames (DRIBBLE_FRAME_BYTES) are over three in
    four of every DATA frame sent to it. A real receiver gets at most one per window it opens,
    after the frames that window let through (at most one in two); a dribbling one gets nearly
    nothing else. Drawing a normal frame per three small ones to dodge it costs the peer a real
    read for each: the CPU per byte stays within a few times a plain download's."""
    return 4 * dribbled_frames > 3 * data_frames_sent


def error_label(code: int) -> str:
    """The metric label of an HTTP/2 error code (a bounded set: unknown codes are "other")."""
    return ERROR_LABELS.get(int(code), "other")


# RFC 9113 §8.2.1 as h2 applies it: a name of bytes 0x21-0x7e but no uppercase, a colon only
# first; a value without NUL, CR or LF, and not starting or ending with a space or a tab.
_NAME_OK = re.compile(rb":?[!-9;-@\[-~]+").fullmatch
_VALUE_OK = re.compile(rb"[^\x00\n\r\t ](?:[^\x00\n\r]*[^\x00\n\r\t ])?").fullmatch
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":status", b":protocol"))
_COLON = 0x3A


def check_received_fields(headers: Iterable[Any], flags: Any) -> list[Any]:
    """h2's `validate_headers` in one pass: the header list as it came, or h2's ProtocolError.

    The same rules, field by field (characters, empty names, `te`, connection-specific fields,
    pseudo-fields: known, once each, first, the right ones for a request, a response or
    trailers; one `host` matching `:authority`; a non-empty `:path`), without h2's chain of
    seven generators. tests/proxy/test_proxy_h2_units.py checks that both accept and refuse the
    same lists. `flags` is h2's `HeaderValidationFlags`."""
    fields = headers if isinstance(headers, list) else list(headers)
    request = not flags.is_response_header and not flags.is_trailer
    pseudo: set[bytes] = set()
    regular = False
    method = authority = host = path = None
    for field in fields:
        name, value = field[0], field[1]
        if _NAME_OK(name) is None or (value and _VALUE_OK(value) is None):
            raise ProtocolError(f"Received an invalid header field {name!r}")
        if name[0] == _COLON:
            if regular or name in pseudo or name not in _PSEUDO:
                raise ProtocolError(f"Received a misplaced, repeated or unknown pseudo-header {name!r}")
            pseudo.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path":
                path = value
            continue
        regular = True
        if name in CONNECTION_HEADERS:
            raise ProtocolError(f"Connection-specific header field present: {name!r}")
        if name == b"te" and value.lower() != b"trailers":
            raise ProtocolError(f"Invalid value for TE header: {value!r}")
        if name == b"host" and request:
            if host is not None:
                raise ProtocolError("Request header block has multiple Host headers")
            host = value
    _check_pseudo_header_field_acceptability(pseudo, method, flags)
    if request:
        if authority is None and host is None:
            raise ProtocolError("Request header block does not have an :authority or Host header")
        if authority is not None and host is not None and authority != host:
            raise ProtocolError("Request header block has mismatched :authority and Host headers")
        if path is not None and not path:
            raise ProtocolError("An empty :path header is forbidden")
    return fields


@dataclass
class RequestHead:
    """What the mesh reads from a request's header list."""

    fields: Fields  # end-to-end fields, mesh fields removed
    mesh: dict[bytes, bytes]
    authority: bytes
    grpc: bool
    method: bytes = b""
    grpc_timeout: float | None = None  # seconds, from a well-formed `grpc-timeout`


def split_request(headers: Fields) -> RequestHead:
    """Strip the mesh fields; note the authority (`:authority`, else `host`), gRPC and its deadline."""
    kept, mesh = http1.strip_mesh(headers)
    authority = host = b""
    method = b""
    grpc = False
    deadline = None
    for name, value in kept:
        if name == b":authority":
            authority = value
        elif name == b"host":
            host = value
        elif name == b":method":
            method = value
        elif name == b"content-type":
            grpc = value[: len(_GRPC)].lower() == _GRPC
        elif name == b"grpc-timeout":
            deadline = grpc_timeout(value)
    return RequestHead(kept, mesh, authority or host, grpc, method, deadline)


_GRPC_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout(value: bytes) -> float | None:
    """Seconds of a `grpc-timeout` value (1–8 digits and a unit: gRPC over HTTP/2); None if malformed."""
    digits, unit = value[:-1], value[-1:]
    scale = _GRPC_TIMEOUT_UNITS.get(unit)
    if scale is None or not 1 <= len(digits) <= 8 or not digits.isdigit():
        return None
    return int(digits) * scale


def head_timeout(response_timeout: float, idle_timeout: float, grpc_deadline: float | None) -> float:
    """How long a stream waits for its response head once its request ended.

    `--response-timeout`, as for HTTP/1; a gRPC client that set a longer deadline (`grpc-timeout`:
    a server-streaming RPC whose first message comes late) is given it, up to the idle timeout."""
    if grpc_deadline is None or grpc_deadline <= response_timeout:
        return response_timeout
    return min(grpc_deadline, idle_timeout)


def stream_timeout(
    now: float,
    active: float,
    request_end: float,
    head_limit: float,
    idle_timeout: float,
    head_seen: bool,
    queued_for_client: bool,
    queued_for_upstream: bool,
) -> str:
    """The error label of a stream past one of its deadlines, else "" (the watchdog asks each tick).

    `active` is the last time a frame of the stream moved either way, `request_end` when the
    request's end went upstream (0: not yet). The response head is due `head_limit` after the
    request's end (Linkerd's and Envoy's response-header timeout); after that, a stream is
    only cut when nothing moved either way for `idle_timeout` (Envoy's stream idle timeout), so a
    streaming RPC that makes progress, however long, is never cut. The label names who stalled,
    as HTTP/1's do: `timeout` when the proxy waits on the upstream (the response is due, or bytes
    for it wait unread), `client_timeout` when it waits on the client (bytes for it wait unread,
    or its request is still open)."""
    if not head_seen and request_end and now - request_end > head_limit:
        return "timeout"
    if now - active <= idle_timeout:
        return ""
    if queued_for_client:
        return "client_timeout"
    if queued_for_upstream or request_end:
        return "timeout"
    return "client_timeout"


def request_fields(head: RequestHead, outbound: bool, identity: bytes | None, hop_id: bytes) -> Fields:
    """The fields sent upstream: an outbound proxy adds its identity and the hop marker."""
    if not outbound:
        return head.fields
    return head.fields + http1.outbound_mesh_fields(identity, head.mesh.get(http1.MESH_VIA), hop_id)


def loops(head: RequestHead, hop_id: bytes) -> bool:
    return http1.via_loops(head.mesh.get(http1.MESH_VIA), hop_id)


def body_length(fields: Fields, method: bytes, status: int) -> int | None:
    """The body a response's content-length promises (None: no promise to check). A response to
    HEAD, a 204 and a 304 have no body whatever it says; a malformed or conflicting value
    promises nothing (the body is passed on as it comes, as the client would get it unmeshed)."""
    if method == b"HEAD" or status in (204, 304):
        return None
    values = {value for name, value in fields if name == b"content-length"}
    if len(values) != 1:
        return None
    value = values.pop()
    return int(value) if value.isdigit() else None


@dataclass
class ResponseHead:
    fields: Fields
    mesh: dict[bytes, bytes]
    status: int
    grpc_status: str  # "" unless the fields carry grpc-status (a trailers-only response)


def status_code(value: bytes) -> int:
    """A `:status` value as a number; 0 unless three digits (RFC 9110 §15): the caller refuses it."""
    return int(value) if len(value) == 3 and value.isdigit() else 0


def split_response(headers: Fields) -> ResponseHead:
    """A response head's fields for the client, its mesh fields, its status (0 unless three
    digits, RFC 9110 §15: the caller refuses it) and gRPC status."""
    kept, mesh = http1.strip_mesh(headers)
    status = 0
    grpc = None
    for name, value in kept:
        if name == b":status":
            status = status_code(value)
        elif name == b"grpc-status":
            grpc = value
    return ResponseHead(kept, mesh, status, grpc_status_label(grpc))


def informational_fields(headers: Fields) -> Fields | None:
    """A 1xx head to pass on to the client (100-continue, 103 early hints), mesh fields stripped;
    None for a 101, which HTTP/2 forbids (RFC 9113 §8.6), and for a status that is not three
    digits (h2 takes any status starting with "1" for informational): dropped."""
    kept, _ = http1.strip_mesh(headers)
    for name, value in kept:
        if name == b":status" and status_code(value) in (0, 101):
            return None
    return kept


def split_trailers(headers: Fields) -> tuple[Fields, str]:
    """(the trailer fields without the mesh's, the grpc_status label they carry)."""
    kept, _ = http1.strip_mesh(headers)
    grpc = next((v for n, v in kept if n == b"grpc-status"), None)
    return kept, grpc_status_label(grpc)


GRPC_UNAVAILABLE = "14"
# The gRPC status a failure answer carries: UNAVAILABLE (retry may help) unless the request itself
# is refused for its size (431): RESOURCE_EXHAUSTED, what a gRPC server answers metadata over its
# limit with (a retry of the same call cannot succeed).
_GRPC_FOR_STATUS = {431: "8"}


def failure_grpc_status(status: int) -> str:
    """The `grpc-status` of the proxy's own answer with HTTP `status` (failure_response)."""
    return _GRPC_FOR_STATUS.get(status, GRPC_UNAVAILABLE)


def failure_response(status: int, grpc: bool, reason: str) -> Fields:
    """A response the proxy answers a stream with when it cannot get one (502, 504, 400).

    gRPC clients get what Linkerd sends them: a trailers-only response with `grpc-status` 14
    (UNAVAILABLE), which a gRPC client reports as such (an HTTP 502 would read as "unknown"); a
    431 is RESOURCE_EXHAUSTED (`failure_grpc_status`).
    """
    if grpc:
        return [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", failure_grpc_status(status).encode()),
            (b"grpc-message", f"mesh proxy: {reason}".encode()),
        ]
    return [(b":status", str(status).encode()), (b"content-length", b"0")]


@dataclass
class Budget:
    """At most `limit` events per second (a window that restarts each second): flood detection."""

    limit: int
    window_start: float = 0.0
    count: int = 0

    def spend(self, now: float) -> bool:
        """Count one event; False once the window holds more than the budget."""
        if now - self.window_start >= 1.0:
            self.window_start = now
            self.count = 0
        self.count += 1
        return self.count <= self.limit
