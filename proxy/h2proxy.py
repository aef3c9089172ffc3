"""HTTP/2 through the proxy: the socket I/O around python-hyper's `h2`, stream by stream.

A client connection (`Session`) and an upstream connection (`H2Upstream`) are each one
`h2.connection.H2Connection` with two greenlets: a reader that feeds bytes in and acts on the
events, and a writer that sends what h2 queued. Nothing that waits on one socket runs in the
other's reader, so a client that reads slowly holds back its own streams only.

Streams are multiplexed: `H2Pool` keeps a few h2 connections per destination and direction,
shared by every client, each carrying up to its peer's stream limit. A stream's bytes move in
order through a queue per direction; DATA is passed on only as the next hop's flow-control
window (and the socket's backlog) allows, and acknowledged to its sender only once passed on,
so the proxy holds at most a window per stream, never a whole stream. The mesh's rules (mesh
fields, authority, classification) are in h2rules.py; this module only applies them.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import h2.utilities
import hpack.hpack
import hyperframe.frame
from h2.errors import ErrorCodes
from h2.stream import StreamClosedBy
from h2.utilities import HeaderValidationFlags
from hyperframe.frame import GoAwayFrame

from . import h2rules, hpack_nghttp2
from .connections import (
    RECV,
    Address,
    Client,
    Upstream,
    UpstreamError,
    hostport,
    send,
    shutdown,
)
from .h2rules import Fields, RequestHead
from .http1 import MESH_DST, MESH_SRC, split_authority
from .identity import NO_LABELS, Labels

if TYPE_CHECKING:
    from .server import Proxy
    from .tap import TapRequest


def _no_eager_formatting() -> None:
    """Spare every frame and header the formatting h2 and hpack do for logs nobody reads.

    h2 formats each frame it receives (`repr(frame)`, hex of its payload included) as the
    argument of a trace call on its no-op logger, and hpack calls `logging`'s debug (off) about
    each header it codes: together about a tenth of a stream's CPU in the proxy (bench
    `compare_proxy`). In the proxy's process a frame's repr becomes its class name and hpack's
    logger a no-op; nothing else reads them (tests/proxy/test_proxy_h2_units.py checks both hooks
    still exist, should a new h2 or hpack move them)."""
    hyperframe.frame.Frame.__repr__ = _frame_name  # type: ignore[method-assign]
    hpack.hpack.log = _SILENT  # type: ignore[assignment]


def _frame_name(frame: hyperframe.frame.Frame) -> str:
    return type(frame).__name__


class _Silent:
    def debug(self, *args: object, **kwargs: object) -> None:
        pass


_SILENT = _Silent()
_no_eager_formatting()
# h2 checks each received header list with a chain of seven generators, one pass per rule and
# per field; h2rules.check_received_fields applies the same rules in one pass (a hypothesis test
# compares the two, tests/proxy/test_proxy_h2_units.py). Still on both sides, always: see Side.
h2.stream.validate_headers = h2rules.check_received_fields  # type: ignore[assignment]


class _CompressionError(h2.exceptions.ProtocolError):
    error_code = ErrorCodes.COMPRESSION_ERROR


_h2_decode_headers = h2.connection._decode_headers


def _decode_headers(decoder: Any, block: bytes) -> Any:
    """h2's, with RFC 9113 §4.3's error code: a header block that does not decode (a bad index,
    Huffman garbage, a table-size update over the limit) is a connection error of type
    COMPRESSION_ERROR; h2 said PROTOCOL_ERROR. A list over its limit stays h2's
    DenialOfServiceError (ENHANCE_YOUR_CALM)."""
    try:
        return _h2_decode_headers(decoder, block)
    except h2.exceptions.DenialOfServiceError:
        raise
    except h2.exceptions.ProtocolError as error:
        raise _CompressionError(str(error)) from error.__cause__


h2.connection._decode_headers = _decode_headers  # type: ignore[assignment]


class _ResetsOnly(h2.utilities.SizeLimitDict):
    """h2's memory of closed streams, keeping the reset ones only.

    h2 remembers how each of the last 65,536 streams of a connection closed, so that a frame
    arriving late on a stream that was reset is answered with RST_STREAM instead of ending the
    connection. Yet the streams that ended normally are nearly all of them, and a long-lived
    connection filled the memory with them: about 100 bytes each, 6 MiB per connection (RSS grew
    by 0.15 KiB a stream, past 60 MiB after 200k streams through one hop).

    Late HEADERS on a stream that ended normally must still be a connection error of type
    STREAM_CLOSED (RFC 9113 §5.1), as h2 makes it when it remembers the stream, not the
    PROTOCOL_ERROR of a stream it never saw: one bit per stream says "ended" (8 KiB for the
    same 65,536 streams; a slot is reused by the stream 131,072 ids later)."""

    _RESET = frozenset((h2.stream.StreamClosedBy.RECV_RST_STREAM, h2.stream.StreamClosedBy.SEND_RST_STREAM))
    _END = frozenset((h2.stream.StreamClosedBy.RECV_END_STREAM, h2.stream.StreamClosedBy.SEND_END_STREAM))

    def __init__(self, size_limit: int) -> None:
        super().__init__(size_limit=size_limit)
        self._ended = bytearray(size_limit // 8)

    def _slot(self, key: int) -> tuple[int, int]:
        bit = (key >> 1) % (len(self._ended) * 8)
        return bit >> 3, 1 << (bit & 7)

    def __setitem__(self, key: int, value: Any) -> None:
        at, bit = self._slot(key)
        if value in self._END:
            self._ended[at] |= bit
            return
        self._ended[at] &= ~bit & 0xFF
        if value in self._RESET:
            super().__setitem__(key, value)

    def __contains__(self, key: object) -> bool:
        if super().__contains__(key):
            return True
        if not isinstance(key, int):
            return False
        at, bit = self._slot(key)
        return bool(self._ended[at] & bit)

    def __getitem__(self, key: int) -> Any:
        if super().__contains__(key):
            return super().__getitem__(key)
        if key in self:
            return h2.stream.StreamClosedBy.RECV_END_STREAM  # which end, h2 never asks
        raise KeyError(key)


class _WindowUpdateFlood(h2.exceptions.ProtocolError):
    """More WINDOW_UPDATE frames than h2rules.window_updates_allowed: GOAWAY ENHANCE_YOUR_CALM."""

    error_code = ErrorCodes.ENHANCE_YOUR_CALM


_OPEN_STATES = (h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionState.SERVER_OPEN)


class _Connection(h2.connection.H2Connection):
    """h2's connection, without its walk over every stream each time a stream opens.

    To check a new stream against the concurrency limit, h2 counts the open streams of one
    parity by walking all it knows (dropping the closed ones as it goes): on an upstream
    connection carrying ~100 streams, a hundred state checks per stream opened. Here the count
    is an upper bound instead: the open streams at the last walk plus every stream id issued
    since. The limit is never laxer (a walk gives h2 the exact count whenever the bound could
    reach the limit), and a walk still comes every WALK_EVERY new streams, so closed streams
    leave `self.streams` as before, a bounded number later."""

    WALK_EVERY = 16

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config)
        self._walked = {0: (0, 0), 1: (0, 0)}  # parity: (open streams at the last walk, highest id then)
        self._closed_streams = _ResetsOnly(size_limit=self.MAX_CLOSED_STREAMS)
        self.data_frames_sent = 0
        self.streams_opened = 0  # both ways; not the highest ID, which a peer may jump to 2^31 - 1
        self.window_updates = 0  # WINDOW_UPDATE frames received, every stream (closed ones too)
        self._window_updates_allowed = h2rules.window_updates_allowed(0, 0)
        self.goaways = 0  # GOAWAYs received that took effect (h2rules.GOAWAYS_HONOURED)
        self.goaway_last = h2rules.MAX_STREAM_ID  # the last stream id the peer's GOAWAYs named

    def send_data(self, stream_id: int, data: Any, end_stream: bool = False, pad_length: Any = None) -> None:
        self.data_frames_sent += 1  # what the peer may acknowledge (window_updates_allowed)
        super().send_data(stream_id, data, end_stream, pad_length)

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> Any:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        self.streams_opened += 1
        return stream

    def _receive_window_update_frame(self, frame: Any) -> Any:
        """Every WINDOW_UPDATE is counted here, as it is read, even on a stream h2 forgot (it
        emits no event for those): over the budget, the frames after it are not even parsed."""
        self.window_updates += 1
        if self.window_updates > self._window_updates_allowed:  # the allowance only grows: recount
            self._window_updates_allowed = h2rules.window_updates_allowed(
                self.streams_opened, self.data_frames_sent
            )
            if self.window_updates > self._window_updates_allowed:
                raise _WindowUpdateFlood("WINDOW_UPDATE flood")
        return super()._receive_window_update_frame(frame)

    def _receive_goaway_frame(self, frame: Any) -> Any:
        """RFC 9113 §6.8: a GOAWAY stops new streams, not those under way: "activity on streams
        numbered lower or equal to the last stream identifier might still complete". h2 closes
        its connection on any GOAWAY received and drops what it had queued (python-hyper/h2#1181),
        so a client that said GOAWAY while its downloads ran (as some SDKs do once a response's
        head came) lost them, and a backend's graceful GOAWAY cut the streams it had taken. Here
        the connection stays open: the proxy opens nothing more on it (`Session.remote_goaway`,
        `H2Upstream.draining`; streams above the last are refused) and ends it once its streams
        have. Before the prefaces were exchanged (IDLE), and past h2rules.GOAWAYS_HONOURED, h2's
        own rule stands."""
        if self.state_machine.state not in _OPEN_STATES or self.goaways >= h2rules.GOAWAYS_HONOURED:
            return super()._receive_goaway_frame(frame)
        if self.goaways and frame.last_stream_id >= self.goaway_last:
            return [], []  # nothing new: a repeat, or a raise the RFC forbids
        self.goaways += 1
        self.goaway_last = frame.last_stream_id
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _open_streams(self, remainder: int) -> int:
        outbound = remainder == (1 if self.config.client_side else 0)
        if outbound:
            highest, limit = self.highest_outbound_stream_id, self.remote_settings.max_concurrent_streams
        else:
            highest, limit = self.highest_inbound_stream_id, self.local_settings.max_concurrent_streams
        counted, then = self._walked[remainder]
        opened = (highest - then + 1) // 2  # stream ids of one parity go up by two
        if opened < self.WALK_EVERY and counted + opened + 1 <= limit:
            return counted + opened
        count = super()._open_streams(remainder)
        self._walked[remainder] = (count, highest)
        return count


INBOUND, OUTBOUND = "inbound", "outbound"
DATA, TRAILERS, END = 0, 1, 2
Item = tuple[int, Any, int]  # (kind, data or fields, flow-controlled length to acknowledge)
UPSTREAM_IDLE_SECONDS = 30.0  # as the HTTP/1 pool


def _settings(client_side: bool) -> dict[h2.settings.SettingCodes, int]:
    values = {
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: h2rules.MAX_CONCURRENT_STREAMS,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: h2rules.MAX_HEADER_LIST_SIZE,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: h2rules.STREAM_WINDOW,
    }
    if client_side:
        values[h2.settings.SettingCodes.ENABLE_PUSH] = 0
    return values


def _connection_error_label(error: Exception) -> str:
    if isinstance(error, h2.exceptions.TooManyStreamsError):
        return "too_many_streams"
    if isinstance(error, _WindowUpdateFlood):
        return "window_update_flood"
    if isinstance(error, h2.exceptions.DenialOfServiceError):
        return "header_list_too_large"  # an HPACK bomb or a plain oversized header list
    if isinstance(error, h2.exceptions.ProtocolError):
        return h2rules.error_label(error.error_code)
    return "protocol_error"


def hpack_in_use() -> str:
    """What codes header blocks, for the `ready` log line: nghttp2 and its version, or h2's hpack."""
    version = hpack_nghttp2.load()
    return f"nghttp2-{version}" if version else "python"


def header_block_bytes(conn: h2.connection.H2Connection) -> int:
    """Bytes of the header block h2 holds until its END_HEADERS (its frames' payloads so far)."""
    return sum(len(frame.data) for frame in getattr(conn.incoming_buffer, "_headers_buffer", ()))


def header_block_pending(conn: h2.connection.H2Connection) -> bool:
    """True while a header block is arriving: HEADERS or CONTINUATION frames without
    END_HEADERS buffered, or a HEADERS/CONTINUATION frame still partly read. h2 keeps both in
    its frame buffer and reports the stream only once the block is whole."""
    buffer = conn.incoming_buffer
    if getattr(buffer, "_headers_buffer", None):
        return True
    data = getattr(buffer, "_data", b"")
    return len(data) >= 4 and data[3] in (0x1, 0x9)  # a frame's type is its fourth byte


def new_connection(client_side: bool) -> _Connection:
    """An h2 connection with the proxy's settings, limits and HPACK coders, before any I/O.

    What it sends was validated when it arrived on the other side (or is the proxy's own):
    checking it again would cost as much as the check on receipt, for nothing. What arrives is
    validated (h2's rules: names, characters, pseudo-headers, connection fields), always: an
    upstream connection is shared by many clients' streams, and a malformed header list passed on
    would end the whole connection at a peer that checks (h2 treats it as a connection error).
    Inbound normalisation only joins `cookie` crumbs, which HTTP/2 lets a proxy pass on as they
    are (RFC 9113 §8.2.3)."""
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        normalize_inbound_headers=False,
    )
    conn = _Connection(config)
    conn.local_settings = h2.settings.Settings(client=client_side, initial_values=_settings(client_side))
    hpack_nghttp2.install(conn)  # HPACK in C when libnghttp2 is there; h2's own otherwise
    conn.decoder.max_header_list_size = h2rules.MAX_HEADER_LIST_SIZE
    return conn


class Side:
    """One h2 connection over one socket: events in from a reader, bytes out from a writer."""

    def __init__(self, proxy: Proxy, client_side: bool, direction: str) -> None:
        self.proxy = proxy
        self.direction = direction
        self.conn = new_connection(client_side)
        self.sock: Any = None
        self.holder: Client | Upstream | None = None  # its TCP series
        self.streams: dict[int, Stream] = {}  # changed by `track` and `forget` only
        # Its series of h2_open_streams: as the TCP series, "src" faces clients, "dst" upstreams.
        self.gauge_key = (direction, "dst" if client_side else "src")
        self.outq: list[bytes] = []
        self.backlog = 0  # bytes queued or being sent
        self.blocked = False  # DATA waits for the backlog to fall under HIGH_WATER
        self.wake = gevent.event.Event()
        self.closing = False  # no more reads; the writer sends what is queued and stops
        self.dead = False  # the socket failed or the connection ended in error
        self.writer: gevent.Greenlet | None = None
        self.pings = h2rules.Budget(h2rules.PING_BUDGET)
        self.settings = h2rules.Budget(h2rules.SETTINGS_BUDGET)
        self.empties = h2rules.Budget(h2rules.EMPTY_FRAME_BUDGET)
        self.dribbles = h2rules.Budget(h2rules.DRIBBLE_BUDGET)
        self.dribbled = 0  # DATA frames this peer's window cut small, the connection's life (`_dribbled`)

    def start(self, window: int = h2rules.CONNECTION_WINDOW) -> None:
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(window - 65535)
        self.pull()
        self.writer = gevent.spawn(self._write_loop)

    def pull(self) -> None:
        """Move what h2 queued to the writer; a peer that makes us queue too much is cut off."""
        data = self.conn.data_to_send()
        if data:
            self.outq.append(data)
            self.backlog += len(data)
            self.wake.set()
            if self.backlog > h2rules.MAX_BACKLOG and not self.dead:
                self.fail_connection("write_backlog", None)

    def _write_loop(self) -> None:
        try:
            while True:
                if not self.outq:
                    if self.closing:
                        return
                    self.wake.wait()
                    self.wake.clear()
                    continue
                data = self.outq[0] if len(self.outq) == 1 else b"".join(self.outq)
                self.outq = []
                send(self.sock, data)
                if self.holder is not None:
                    self.holder.tcp.written += len(data)
                self.backlog -= len(data)
                if self.blocked and self.backlog < h2rules.HIGH_WATER:
                    self.blocked = False
                    self.pump_all()
        except OSError:
            self.dead = True
            shutdown(self.sock)  # the reader ends too

    def feed(self, data: bytes) -> bool:
        """Hand received bytes to h2 and act on its events; False once the connection is over."""
        if self.holder is not None:
            self.holder.tcp.read += len(data)
        try:
            events = self.conn.receive_data(data)
        except Exception as error:  # h2 queued a GOAWAY with the right code for its errors
            self.fail_connection(_connection_error_label(error), None)
            return False
        now = self.proxy.now
        for event in events:
            if isinstance(event, h2.events.PingReceived):
                if not self.pings.spend(now):
                    self.fail_connection("ping_flood", ErrorCodes.ENHANCE_YOUR_CALM)
                    return False
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                if not self.settings.spend(now):
                    self.fail_connection("settings_flood", ErrorCodes.ENHANCE_YOUR_CALM)
                    return False
                encoder = self.conn.encoder  # h2 follows the peer's table size: we keep ours
                if encoder.header_table_size > h2rules.HEADER_TABLE_SIZE:
                    encoder.header_table_size = h2rules.HEADER_TABLE_SIZE
                self.pump_all()
            elif isinstance(event, h2.events.WindowUpdated):
                if event.stream_id == 0:
                    self.pump_all()
                else:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        self.pump(stream)
            else:
                try:
                    self.on_event(event)
                except Exception as error:  # a bug, or input no rule foresaw: see event_failed
                    self.event_failed(event, error)
            if self.dead:
                return False
        self.pull()
        return not self.dead and not self.closing

    def fail_connection(self, label: str, code: ErrorCodes | None) -> None:
        """End the connection for what the peer did: GOAWAY (h2's code, or `code`), count it."""
        if self.dead:
            return
        self.dead = True
        self.proxy.metrics.h2_error(self.direction, label)
        self.proxy.log_limited("h2_connection_error", direction=self.direction, error=label)
        if code is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.close_connection(error_code=code)
        data = self.conn.data_to_send()
        if data and self.backlog < h2rules.MAX_BACKLOG:
            self.outq.append(data)
        self.closing = True
        self.wake.set()
        if self.sock is not None:
            shutdown(self.sock, 0)  # SHUT_RD: the reader stops, the writer sends the GOAWAY

    def finish_writer(self) -> None:
        self.closing = True
        self.wake.set()
        if self.writer is not None:
            self.writer.join(timeout=1.0)
            self.writer.kill(block=False)

    def track(self, stream_id: int, stream: Stream) -> None:
        """A stream begins on this connection: kept, and counted in h2_open_streams."""
        self.streams[stream_id] = stream
        self.proxy.metrics.h2_streams[self.gauge_key] += 1

    def forget(self, stream_id: int) -> None:
        """A stream ends on this connection: dropped, and counted out of h2_open_streams once,
        however many of its end paths call this (a stream never kept here counts nothing)."""
        if self.streams.pop(stream_id, None) is not None:
            self.proxy.metrics.h2_streams[self.gauge_key] -= 1

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        if self.dead:
            return
        try:
            self.conn.reset_stream(stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.pull()

    # Subclasses: which queue of a stream flows into this side, and the other events.
    def pump(self, stream: Stream) -> None:
        raise NotImplementedError

    def pump_all(self) -> None:
        """A window opened or the writer caught up: the streams with something queued go on."""
        for stream in list(self.streams.values()):
            self.pump(stream)

    def on_event(self, event: h2.events.Event) -> None:
        raise NotImplementedError

    def event_failed(self, event: h2.events.Event, error: Exception) -> None:
        """An unexpected exception while acting on a stream's event: by default the connection's
        reader ends with it (a client's connection: its own streams only)."""
        raise error


class Stream:
    """One request and its response, between a client's stream and an upstream's."""

    __slots__ = (
        "active",
        "authority",
        "body_left",
        "counted",
        "down_done",
        "grpc_status",
        "head",
        "head_limit",
        "latency_ms",
        "peer",
        "request_end",
        "session",
        "sid",
        "start",
        "status",
        "stop_client",
        "tap",
        "tap_bytes",
        "to_down",
        "to_up",
        "uid",
        "up",
        "up_done",
    )  # fmt: skip

    def __init__(self, session: Session, sid: int, head: RequestHead, authority: str, peer: Labels) -> None:
        self.session = session
        self.sid = sid
        self.head = head
        self.authority = authority
        self.peer = peer
        self.up: H2Upstream | None = None
        self.uid = 0
        self.to_up: deque[Item] = deque()
        self.to_down: deque[Item] = deque()
        self.start = time.monotonic()
        self.latency_ms = -1.0  # set when the response head came (latency to headers)
        self.status = 0
        self.grpc_status = ""
        self.up_done = False  # the request's end went upstream (or the upstream stream is gone)
        self.down_done = False  # the response's end went to the client (or the client stream is gone)
        self.counted = False
        self.tap: TapRequest | None = None  # set only while someone taps this proxy (tap.py)
        self.tap_bytes = 0  # response DATA bytes, counted only while tapped
        self.body_left: int | None = None  # response bytes its content-length still promises
        self.stop_client = False  # the upstream answered whole and asked the request to stop
        # Deadlines (h2rules.stream_timeout), on the proxy's coarse clock: the last time a frame
        # of the stream moved, when the request's end went upstream, and the wait for the head.
        proxy = session.proxy
        self.active = proxy.now
        self.request_end = 0.0
        config = proxy.config
        self.head_limit = (
            config.response_timeout
            if head.grpc_timeout is None
            else h2rules.head_timeout(config.response_timeout, config.idle_timeout, head.grpc_timeout)
        )

    def count(self, error: str = "") -> None:
        if self.counted:
            return
        self.counted = True
        latency = self.latency_ms if self.latency_ms >= 0 else (time.monotonic() - self.start) * 1000.0
        session = self.session
        session.proxy.metrics.response(
            session.direction, self.authority, self.peer, self.status, error, latency, self.grpc_status
        )
        tap = self.tap
        if tap is not None:
            grpc = int(self.grpc_status) if self.grpc_status.isdigit() else None
            if self.latency_ms < 0:  # no response head came: the tap still says how it ended
                tap.response(self.status, grpc_status=grpc)
            tap.end(self.tap_bytes, error or None, grpc)

    def respond(self, headers: Fields, ended: bool) -> None:
        """The upstream's final response head: filter, count its latency, pass it on."""
        session = self.session
        proxy = session.proxy
        response = h2rules.split_response(headers)
        if not 200 <= response.status <= 599:  # not a final status (RFC 9110 §15): malformed
            self.malformed()
            return
        self.body_left = h2rules.body_length(response.fields, self.head.method, response.status)
        if ended and self.body_left:  # ended by its HEADERS short of its content-length
            self.malformed()
            return
        self.latency_ms = (time.monotonic() - self.start) * 1000.0
        self.status = response.status
        self.grpc_status = response.grpc_status
        fields = response.fields
        if session.direction == OUTBOUND:
            self.peer = proxy.dst_labels.get(response.mesh.get(MESH_DST))
            upstream = self.up
            if upstream is not None and upstream.holder is not None and upstream.holder.tcp.pending:
                proxy.attach(upstream.holder, self.peer)
        elif self.peer:  # only a meshed client learns who answered
            fields = fields + proxy.inbound_reply_extra
        if self.tap is not None:
            self._tap_response(response.mesh.get(MESH_DST))
        if session.dead:
            return
        try:
            session.conn.send_headers(self.sid, fields, end_stream=ended)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.down_done = True
            return
        session.pull()
        if ended:
            self.response_ended()

    def inform(self, headers: Fields) -> None:
        """A 1xx from the upstream (100-continue, 103 early hints): passed on as informational
        HEADERS; the stream still waits for its final response (and its latency runs on)."""
        session = self.session
        fields = h2rules.informational_fields(headers)
        if fields is None or self.latency_ms >= 0 or self.down_done or session.dead:
            return
        try:
            session.conn.send_headers(self.sid, fields)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        session.pull()

    def expire(self, error: str) -> None:
        """A deadline passed (h2rules.stream_timeout): free the stream's slots on both sides.

        The upstream's stream is reset with CANCEL (RFC 9113: no longer needed; a gRPC server
        sees the call cancelled). An upstream that never sent its head is answered for, as in
        HTTP/1 and Envoy: 504 (gRPC: status 14); otherwise the client's stream is reset with
        INTERNAL_ERROR, as for an upstream lost mid-stream. Counted under `error`."""
        session = self.session
        session.proxy.log_limited("h2_stream_timeout", direction=session.direction, error=error)
        upstream = self.up
        if upstream is not None and self.uid:  # (a stream already closed there is left alone)
            upstream.reset(self.uid, ErrorCodes.CANCEL)
        if error == "timeout" and self.latency_ms < 0 and not self.down_done:
            self.fail(error, 504)
            return
        # A response that went whole to a client still sending: NO_ERROR asks it to stop
        # (RFC 9113 §8.1) without making its response a failure.
        session.reset(self.sid, ErrorCodes.NO_ERROR if self.down_done else ErrorCodes.INTERNAL_ERROR)
        self.up_done = self.down_done = True
        self.count(error)
        self.settle()

    def _tap_response(self, claimed: bytes | None) -> None:
        """The tap's `rsp`, with the gRPC status when the head carries it."""
        session = self.session
        callee = session.proxy.tap_callee(session.direction, claimed, bool(self.peer))
        grpc = int(self.grpc_status) if self.grpc_status.isdigit() else None
        assert self.tap is not None
        self.tap.response(self.status, callee, grpc)

    def response_ended(self) -> None:
        self.down_done = True
        self.count()
        if self.stop_client:  # as the upstream asked: stop sending, the answer is whole
            self.session.reset(self.sid, ErrorCodes.NO_ERROR)
        self.settle()

    def stop_request(self) -> None:
        """The upstream sent its whole response, then RST_STREAM(NO_ERROR) to stop the request
        (RFC 9113 §8.1; gRPC servers and upload limits do). The response goes on to the client
        whole (it was cut, the part queued here lost), then the client is asked the same."""
        self.up_done = True
        self.stop_client = True
        if self.down_done:
            self.session.reset(self.sid, ErrorCodes.NO_ERROR)
        self.settle()

    def fail(self, error: str, status: int = 502, reason: str = "") -> None:
        """The upstream failed the stream: answer it (no response yet) or reset it; count it.

        `error` is the metric label ("" when the status says it all, as for HTTP/1's 400 and
        503), `reason` the text a gRPC client reads (default: the label)."""
        session = self.session
        if self.latency_ms < 0 and not self.down_done:
            self.status = 200 if self.head.grpc else status
            self.grpc_status = h2rules.failure_grpc_status(status) if self.head.grpc else ""
            if not session.dead:
                try:
                    fields = h2rules.failure_response(status, self.head.grpc, reason or error)
                    session.conn.send_headers(self.sid, fields, end_stream=True)
                    if not session.conn.streams[self.sid].closed:
                        # The request is still arriving: answered whole, the client is asked to
                        # stop (RFC 9113 §8.1), or it would send a body no one reads, its stream
                        # open in h2 (one of the connection's 100) until it ends it.
                        session.conn.reset_stream(self.sid, ErrorCodes.NO_ERROR)
                    session.pull()
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    pass
        elif not self.down_done:
            session.reset(self.sid, ErrorCodes.INTERNAL_ERROR)
        self.down_done = self.up_done = True
        self.count(error)
        self.settle()

    def refuse(self) -> None:
        """The upstream never processed the stream (REFUSED_STREAM, or above its GOAWAY's last
        stream): the client is told so in the same words and may retry it (RFC 9113 §8.7; grpcio
        does not retry it by itself: measured). The proxy itself never sends a request twice. A stream whose
        response began cannot have been refused: that is a reset."""
        if self.latency_ms >= 0 or self.down_done:
            self.fail("reset")
            return
        self.session.reset(self.sid, ErrorCodes.REFUSED_STREAM)
        self.up_done = self.down_done = True
        self.count("reset")
        self.settle()

    def malformed(self) -> None:
        """The upstream's response is malformed (a header list against RFC 9113's rules, a body
        that disagrees with its content-length; §8.1.1: a stream error): this stream is reset
        on both sides, and no other."""
        if self.up is not None:
            self.up.reset(self.uid, ErrorCodes.PROTOCOL_ERROR)
        self.fail("bad_response")

    def too_many_fields(self) -> None:
        """The client's header list (head or trailers) holds more than MAX_HEADER_FIELDS: as an
        HTTP/1 head over 100 fields, answered 431 (gRPC: RESOURCE_EXHAUSTED), as Linkerd's h2
        answers a list over its size; counted under that status. What went upstream of it is
        cancelled; the connection and its other streams go on."""
        self.session.proxy.log_limited("h2_too_many_fields", direction=self.session.direction)
        if self.up is not None and self.uid:
            self.up.reset(self.uid, ErrorCodes.CANCEL)
        self.fail("", 431, "too many header fields")

    def client_gone(self) -> None:
        """The client reset the stream or went away: cancel the upstream's side; its doing."""
        if self.up is not None and not (self.up_done and self.down_done):
            self.up.reset(self.uid, ErrorCodes.CANCEL)
        self.up_done = self.down_done = True
        if not self.counted:
            self.count("client_gone")
        self.settle()

    def settle(self) -> None:
        """Forget the stream once both directions are over."""
        if not (self.up_done and self.down_done):
            return
        # Bytes still queued will never be passed on: give their senders the window back, or a
        # connection shared by many streams would shrink with every stream cut short.
        _release(self.to_up, self.session, self.sid)
        self.session.forget(self.sid)
        if self.up is not None:
            _release(self.to_down, self.up, self.uid)
            self.up.forget(self.uid)
            self.up.idle_since = self.session.proxy.now
            if not self.up.streams and self.up.draining:
                self.up.close()
        self.session.after_stream()


def _release(queue: deque[Item], src: Side, src_id: int) -> None:
    flow = sum(item[2] for item in queue)
    queue.clear()
    if flow and not src.dead:
        src.conn.acknowledge_received_data(flow, src_id)
        src.pull()


_HEADER_EVENTS = (
    h2.events.ResponseReceived, h2.events.InformationalResponseReceived, h2.events.TrailersReceived
)  # fmt: skip
_RESPONSE_FLAGS = HeaderValidationFlags(
    is_client=True, is_trailer=False, is_response_header=True, is_push_promise=False
)
_TRAILER_FLAGS = HeaderValidationFlags(
    is_client=True, is_trailer=True, is_response_header=False, is_push_promise=False
)


def _well_formed(event: Any) -> bool:
    """h2's own rules for a received header list (RFC 9113 §8.2, §8.3) and our limits (fields, and
    size: the decoder marks a list over it, `hpack_nghttp2.decode_through`), applied to one stream."""
    headers = event.headers
    if len(headers) > h2rules.MAX_HEADER_FIELDS or (headers and headers[-1] is hpack_nghttp2.OVER_LIMIT):
        return False
    trailer = isinstance(event, h2.events.TrailersReceived)
    try:
        h2rules.check_received_fields(event.headers, _TRAILER_FLAGS if trailer else _RESPONSE_FLAGS)
    except h2.exceptions.ProtocolError:
        return False
    return True


def _no_check(*args: object) -> None:
    pass


def _body_length_per_stream(h2stream: Any) -> None:
    """h2 takes a body that disagrees with its content-length (or a content-length that is no
    number) for a connection error. On an upstream connection, which carries many clients'
    streams, one app's malformed response then reset them all; the proxy checks it per stream
    instead (`Stream.body_left`, `Stream.malformed`). h2 4 calls these two hooks of its stream
    (tests/proxy/test_h2_adversarial_streams.py checks they still exist)."""
    h2stream._initialize_content_length = _no_check
    h2stream._track_content_length = _no_check


def _empty_data(src: Side, event: h2.events.DataReceived) -> bool:
    """A DATA frame with no data: nothing to pass on (False: a flood ended `src`'s connection).
    Queued, such frames cost no window and grew without bound behind a closed one
    (CVE-2019-9518); passed on, they flooded the connection every client shares. They cost only
    CPU, from a client or an upstream alike: those that do not end their stream have a budget
    (one that ends it is how grpcio half-closes). Its padding, if any, is acknowledged at once."""
    if event.stream_ended is None and not src.empties.spend(src.proxy.now):
        src.fail_connection("empty_frame_flood", ErrorCodes.ENHANCE_YOUR_CALM)
        return False
    if event.flow_controlled_length:
        src.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    return True


def _dribbled(dst: Side) -> bool:
    """A DATA frame `dst`'s window cuts under DRIBBLE_FRAME_BYTES, first of its stream's turn
    (CVE-2019-9511): counted; True once over budget (h2rules.dribbling), its connection ended.
    Such frames cost CPU per frame, not per byte, on either side: a client's window on a
    response, an upstream's on an upload."""
    dst.dribbled += 1
    if dst.dribbles.spend(dst.proxy.now) or not h2rules.dribbling(dst.dribbled, dst.conn.data_frames_sent):
        return False
    dst.fail_connection("data_dribble", ErrorCodes.ENHANCE_YOUR_CALM)
    return True


_END: Item = (END, b"", 0)
WAITING, ENDED, GONE = 0, 1, 2  # what `_pump` left: more to send, the end went, `dst`'s stream is gone


def _pump(queue: deque[Item], dst: Side, dst_id: int, src: Side, src_id: int, stream: Stream) -> int:
    """Pass a direction's queued items (never none) into `dst` as its windows allow (WAITING,
    ENDED or GONE).

    DATA is acknowledged to `src` only when it was passed on: the sender's window is what bounds
    the bytes the proxy holds for a stream. Whatever is passed on is the stream's progress. The
    last DATA carries the end with it (one frame, not an empty DATA after it), and what `src`
    and `dst` queued goes to their writers once, at the end."""
    conn = dst.conn
    stream.active = dst.proxy.now
    acked = False
    sent = False  # a DATA frame went this turn: a window's remainder after it is no dribble
    left = WAITING
    try:
        while queue:
            kind, payload, flow = queue[0]
            if kind == DATA:
                if dst.backlog >= h2rules.HIGH_WATER:
                    dst.blocked = True
                    break
                room = min(conn.local_flow_control_window(dst_id), conn.max_outbound_frame_size)
                if room <= 0:
                    break
                if len(payload) > room:  # only ever a window's doing: what we read is <= 16 KiB a frame
                    if room < h2rules.DRIBBLE_FRAME_BYTES and not sent and _dribbled(dst):
                        break
                    conn.send_data(dst_id, payload[:room])
                    sent = True
                    queue[0] = (DATA, payload[room:], flow)
                    continue
                ends = len(queue) > 1 and queue[1][0] == END
                conn.send_data(dst_id, payload, end_stream=ends)
                sent = True
                queue.popleft()
                if flow and not src.dead:
                    src.conn.acknowledge_received_data(flow, src_id)
                    acked = True
                if ends:
                    queue.clear()  # the END went with the DATA
                    left = ENDED
                    break
            else:
                _release(queue, src, src_id)
                if kind == TRAILERS and payload:
                    conn.send_headers(dst_id, payload, end_stream=True)
                else:  # trailers of nothing but mesh fields are none: h2 raised on an empty list
                    conn.end_stream(dst_id)
                left = ENDED
                break
    except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
        # The next hop reset the stream in the frames just read; its event comes next, but the
        # stream is over now: never counted as a response that ended well.
        _release(queue, src, src_id)
        left = GONE
    if acked:
        src.pull()
    dst.pull()
    return left


class Session(Side):
    """A client's h2 connection (inbound or outbound listener)."""

    def __init__(self, proxy: Proxy, client: Client, dest: Address | None, direction: str) -> None:
        super().__init__(proxy, client_side=False, direction=direction)
        self.client = client
        self.sock = client.sock
        self.holder = client
        self.dest = dest
        self.goaway_last = -1  # after a drain's GOAWAY: streams above it are refused
        self.remote_goaway = False
        self.resets = h2rules.Budget(h2rules.RESET_BUDGET)
        self.head_since = 0.0  # when the header block now arriving began (0: none under way)

    def run(self, first: bytes) -> None:
        proxy, client = self.proxy, self.client
        proxy.h2_sessions.add(self)
        client.busy = True  # drain does not cut it: it sends GOAWAY and ends when streams end
        self.start()
        try:
            if proxy.draining:
                self.goaway()
            data = first
            client.tcp.read -= len(first)  # counted once: `feed` counts it again
            while True:
                if data and not self.feed(data):
                    break
                if not self.streams:
                    if self.goaway_last >= 0 or self.remote_goaway:
                        self.goaway()  # the client's GOAWAY answered (after a drain's: a no-op)
                        break
                    client.deadline = proxy.now + proxy.config.idle_timeout
                else:
                    client.deadline = 0.0  # each stream has its own (`expire_streams`)
                if header_block_pending(self.conn):
                    # A header block (HEADERS and its CONTINUATIONs) has header_timeout from its
                    # first frame, as an HTTP/1 head from its first byte; it holds the whole
                    # connection (no other frame may come between), so the connection ends.
                    if header_block_bytes(self.conn) > h2rules.MAX_HEADER_BLOCK_BYTES:
                        self.fail_connection("header_list_too_large", ErrorCodes.ENHANCE_YOUR_CALM)
                        break
                    if not self.head_since:
                        self.head_since = proxy.now
                    client.deadline = self.head_since + proxy.config.header_timeout
                else:
                    self.head_since = 0.0
                try:
                    data = self.sock.recv(RECV)
                except OSError:
                    data = b""
                if not data:
                    if client.expired and self.head_since:
                        self.fail_connection("header_timeout", ErrorCodes.ENHANCE_YOUR_CALM)
                    break
        finally:
            proxy.h2_sessions.discard(self)
            for stream in list(self.streams.values()):
                stream.client_gone()
            self.finish_writer()

    def goaway(self) -> None:
        """GOAWAY(NO_ERROR) naming the last stream taken; those finish, later ones are refused.
        On a drain, and before closing a connection whose client said GOAWAY (`after_stream`)."""
        if self.goaway_last >= 0 or self.dead:
            return
        self.goaway_last = self.conn.highest_inbound_stream_id
        self.pull()  # what h2 queued goes first: frames stay whole and in order
        frame = GoAwayFrame(0, last_stream_id=self.goaway_last, error_code=0)
        self.outq.append(frame.serialize())
        self.wake.set()
        if not self.streams:
            shutdown(self.sock, 0)  # SHUT_RD: the reader ends, the writer sends the GOAWAY

    def after_stream(self) -> None:
        if self.streams:
            return
        if self.goaway_last >= 0 or self.remote_goaway:
            # The connection closes: RFC 9113 §6.8, "endpoints SHOULD always send a GOAWAY frame
            # before closing a connection so that the remote peer can know whether a stream has
            # been partially processed". A client that said GOAWAY may still open streams (its
            # GOAWAY stops ours, not its own): one crossing the close was lost without a word.
            self.goaway()
            shutdown(self.sock, 0)
        elif not self.head_since:  # the reader may be parked in recv: the idle clock starts now
            self.client.deadline = self.proxy.now + self.proxy.config.idle_timeout

    def expire_streams(self, now: float) -> None:
        """Reset the streams past a deadline (the watchdog calls this on every tick)."""
        idle = self.proxy.config.idle_timeout
        for stream in list(self.streams.values()):
            error = h2rules.stream_timeout(
                now, stream.active, stream.request_end, stream.head_limit, idle,
                stream.latency_ms >= 0, bool(stream.to_down), bool(stream.to_up),
            )  # fmt: skip
            if error:
                stream.expire(error)

    def pump(self, stream: Stream) -> None:
        upstream = stream.up
        if upstream is None or stream.down_done or not stream.to_down:
            return
        left = _pump(stream.to_down, self, stream.sid, upstream, stream.uid, stream)
        if left == ENDED:
            stream.response_ended()
        elif left == GONE:
            stream.client_gone()

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers, event.stream_ended is not None)
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            self.remote_goaway = True
            return
        sid = getattr(event, "stream_id", 0)
        stream = self.streams.get(sid)
        if isinstance(event, h2.events.StreamReset):
            if stream is None:
                return
            # CVE-2023-44487 counts streams reset before their response came: the work the
            # client made happen and threw away. A cancelled streaming RPC (a response under way)
            # is not counted, so a connection from a peer proxy, carrying the cancellations of
            # many clients at once, is not taken for an attack.
            if stream.latency_ms < 0 and not self.resets.spend(self.proxy.now):
                self.fail_connection("rapid_reset", ErrorCodes.ENHANCE_YOUR_CALM)
            stream.client_gone()
            return
        if stream is None:
            if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            return
        # The end of the request is queued with the frame that carried it (`stream_ended`), so
        # its last DATA goes upstream with END_STREAM: one frame, not DATA and an empty DATA.
        # h2's StreamEnded event, which always follows that frame's own event, is then ignored.
        if isinstance(event, h2.events.DataReceived):
            if event.data:
                stream.to_up.append((DATA, event.data, event.flow_controlled_length))
            elif not _empty_data(self, event):
                return
            if event.stream_ended is not None:
                stream.to_up.append(_END)
            elif not event.data:
                return
        elif isinstance(event, h2.events.TrailersReceived):
            if h2rules.too_many_fields(event.headers):
                stream.too_many_fields()
                return
            stream.to_up.append((TRAILERS, h2rules.split_trailers(event.headers)[0], 0))
        else:
            return
        stream.active = self.proxy.now
        if stream.up is not None and stream.up.ready:
            stream.up.pump(stream)

    def _request(self, sid: int, headers: Fields, ended: bool) -> None:
        """A new stream's request head (`ended`: with END_STREAM, so the HEADERS sent upstream
        carry it too, as one frame: a GET is never HEADERS and then an empty DATA)."""
        proxy = self.proxy
        if 0 <= self.goaway_last < sid:
            self.reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        head = h2rules.split_request(headers)
        if h2rules.extended_connect(head):
            # RFC 8441 §3: `:protocol` only after SETTINGS_ENABLE_CONNECT_PROTOCOL, which the
            # proxy never sends: malformed, a stream error here, never passed to an upstream
            # that did not offer it either (and may end the connection other clients share).
            self.reset(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        dest = self.dest or split_authority(head.authority, 80)
        authority_bytes = head.authority or (hostport(dest).encode() if dest else b"")
        peer = NO_LABELS
        if self.direction == INBOUND:
            peer = proxy.src_labels.get(head.mesh.get(MESH_SRC))
            if self.client.tcp.pending:
                proxy.attach(self.client, peer)
        stream = Stream(self, sid, head, proxy.authority_label(authority_bytes), peer)
        self.track(sid, stream)
        if h2rules.too_many_fields(headers):
            stream.too_many_fields()  # answered and forgotten: its end, if it came, is moot
            return
        if ended:
            stream.to_up.append(_END)
        outbound = self.direction == OUTBOUND
        if outbound and h2rules.loops(head, proxy.hop_id):
            # The second visit of a loop: refused here and counted once, by the first visit.
            stream.counted = True
            stream.fail("loop", 400)
            return
        if dest is None:
            stream.fail("", 400, "no usable destination in request")
            return
        fields = h2rules.request_fields(head, outbound, proxy.identity, proxy.hop_id)
        if proxy.tap.active:
            path = next((v for k, v in head.fields if k == b":path"), b"")
            stream.tap = proxy.tap_request(
                self.direction, self.client, head.mesh.get(MESH_SRC), bool(stream.peer), head.method,
                stream.authority, path,
            )  # fmt: skip
        proxy.h2pool.open(stream, dest, self.direction, fields)


class H2Upstream(Side):
    """An h2 connection to one destination, shared by streams of any client."""

    def __init__(self, proxy: Proxy, pool: H2Pool, key: tuple[str, Address]) -> None:
        super().__init__(proxy, client_side=True, direction=key[0])
        # h2 takes a malformed header list for a connection error; on a connection that carries
        # many clients' streams, one app response with (say) a `connection` field then reset
        # them all. The upstream's lists are validated here, per stream (`_well_formed`).
        self.conn.config.validate_inbound_headers = False
        # A list over MAX_HEADER_LIST_SIZE fails its stream alone: its block is still decoded to
        # the end (HPACK's table must follow the upstream's encoder, or every later block on the
        # connection reads wrong), the fields past the limit dropped as they come and the list
        # marked OVER_LIMIT (`_well_formed`). A block that does not decode, or that h2 will not
        # buffer (over 64 CONTINUATIONs), still ends the connection: its table is unknown.
        hpack_nghttp2.decode_through(self.conn, h2rules.MAX_HEADER_LIST_SIZE)
        self.pool = pool
        self.key = key
        self.ready = False
        self.draining = False  # no new streams (GOAWAY received, or idle expiry)
        self.waiting: list[tuple[Stream, Fields]] = []
        self.idle_since = proxy.now
        self.upstream: Upstream | None = None

    def has_room(self) -> bool:
        if self.draining or self.dead:
            return False
        if not self.ready:
            return len(self.waiting) < h2rules.MAX_CONCURRENT_STREAMS
        # Our own count: h2's open_outbound_streams walks every stream it knows, on each call.
        conn = self.conn
        if h2rules.upstream_has_room(len(self.streams), conn.remote_settings.max_concurrent_streams,
                                     conn.highest_outbound_stream_id):  # fmt: skip
            return True
        if conn.highest_outbound_stream_id + 2 > h2rules.MAX_STREAM_ID:
            self.draining = True  # out of stream IDs: closed once its last stream ends
        return False

    def add(self, stream: Stream, fields: Fields) -> None:
        stream.up = self
        if self.ready:
            self._open(stream, fields)
        else:
            self.waiting.append((stream, fields))

    def _open(self, stream: Stream, fields: Fields) -> None:
        if stream.up_done and stream.down_done:
            return  # the client gave up while the connection was being made
        uid = self.conn.get_next_available_stream_id()
        stream.uid = uid
        self.track(uid, stream)
        ended = bool(stream.to_up) and stream.to_up[0][0] == END
        self.conn.send_headers(uid, fields, end_stream=ended)
        _body_length_per_stream(self.conn.streams[uid])
        if ended:
            stream.to_up.clear()
            stream.up_done = True
            stream.request_end = self.proxy.now
        self.pump(stream)
        self.pull()  # the HEADERS, with what DATA the windows let through

    def run(self) -> None:
        proxy = self.proxy
        address = self.key[1]
        try:
            self.upstream = proxy.pool.connect(address, self.direction)
        except UpstreamError as error:
            self.dead = True
            proxy.log_upstream_error(self.direction, hostport(address), error.error)
            self.pool.remove(self)
            for stream, _ in self.waiting:
                stream.fail(error.error, error.status)
            return
        self.sock = self.upstream.sock
        self.holder = self.upstream
        try:
            self.start(h2rules.UPSTREAM_CONNECTION_WINDOW)
            self.ready = True
            for stream, fields in self.waiting:
                self._open(stream, fields)
            self.waiting.clear()
            self.pull()
            while True:
                try:
                    data = self.sock.recv(RECV)
                except OSError:
                    data = b""
                if not data or not self.feed(data):
                    break
        finally:
            self.dead = True
            self.pool.remove(self)
            for stream in list(self.streams.values()):
                if not stream.down_done:
                    stream.fail("reset")
                else:
                    stream.up_done = True
                    stream.settle()
            self.finish_writer()
            proxy.pool.discard(self.upstream)

    def close(self) -> None:
        """No streams left and none wanted: GOAWAY and end."""
        self.draining = True
        if self.dead:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection()
        self.pull()
        if self.sock is not None:
            shutdown(self.sock, 0)

    def event_failed(self, event: h2.events.Event, error: Exception) -> None:
        """An unexpected exception while acting on one stream's event: on a connection every
        client shares, that stream alone fails (reset upstream, 502 or a reset to its client,
        counted `error="proxy_error"`) and the others go on. Logged at error, at most once a
        second, by type only: an exception's text may quote a header or a path."""
        self.proxy.log_limited(
            "h2_stream_error", level="error", direction=self.direction,
            h2_event=type(event).__name__, error=type(error).__name__,
        )  # fmt: skip
        stream = self.streams.get(getattr(event, "stream_id", 0))
        if stream is None or (stream.up_done and stream.down_done):
            return
        try:
            self.reset(stream.uid, ErrorCodes.INTERNAL_ERROR)
            stream.fail("proxy_error")
        except Exception:  # its state is beyond answering: forget it on both sides
            stream.up_done = stream.down_done = True
            self.forget(stream.uid)
            stream.session.forget(stream.sid)

    def pump(self, stream: Stream) -> None:
        if stream.up_done or not stream.to_up:
            return
        left = _pump(stream.to_up, self, stream.uid, stream.session, stream.sid, stream)
        if left == ENDED:
            stream.up_done = True
            stream.request_end = self.proxy.now
            stream.settle()
        elif left == GONE:
            h2stream = self.conn.streams.get(stream.uid)
            if h2stream is not None and h2stream.closed_by == StreamClosedBy.RECV_RST_STREAM:
                # The upstream's RST_STREAM, read in this batch: its event, next, says how the
                # stream ends (a refused stream may be retried, a reset one may not).
                stream.up_done = True
            else:
                stream.fail("reset")

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            # Streams it took finish; later ones were never processed. It takes no new stream,
            # so it leaves the pool: a backend that ages connections out (grpc-go's
            # MaxConnectionAge, its grace infinite) while long streams run on left each one
            # draining, counted against UPSTREAMS_PER_DESTINATION until its streams ended; after
            # 8, every new stream to the backend was the proxy's 503. What bounds those still
            # draining is the streams that hold them (a connection with none closes).
            self.draining = True
            self.pool.remove(self)
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for uid, taken in list(self.streams.items()):
                if uid > last:
                    taken.refuse()
            if not self.streams:  # nothing to finish (a GOAWAY on an idle connection): out of the
                self.close()  # pool, no idle expiry would close it, and a backend may not
            return
        sid = getattr(event, "stream_id", 0)
        stream = self.streams.get(sid)
        if stream is None:
            if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            return
        stream.active = self.proxy.now
        if isinstance(event, _HEADER_EVENTS) and not _well_formed(event):
            stream.malformed()
            return
        if isinstance(event, h2.events.ResponseReceived):
            stream.respond(event.headers, event.stream_ended is not None)
            return
        if isinstance(event, h2.events.InformationalResponseReceived):
            stream.inform(event.headers)
            return
        if isinstance(event, h2.events.StreamReset):
            if event.error_code == ErrorCodes.REFUSED_STREAM:
                stream.refuse()
            elif event.error_code == ErrorCodes.NO_ERROR and (
                stream.down_done or (stream.to_down and stream.to_down[-1][0] in (END, TRAILERS))
            ):
                stream.stop_request()
            else:
                stream.fail("reset")
            return
        if stream.down_done:
            if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            return
        # As on the client's side, the end is queued with the frame that carried it, so the last
        # DATA reaches the client with END_STREAM; h2's StreamEnded that follows is ignored.
        if isinstance(event, h2.events.DataReceived):
            data = event.data
            if data:
                if stream.body_left is not None:
                    stream.body_left -= len(data)
                    if stream.body_left < 0:
                        self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
                        stream.malformed()
                        return
                stream.to_down.append((DATA, data, event.flow_controlled_length))
                if stream.tap is not None:
                    stream.tap_bytes += len(data)
            elif not _empty_data(self, event):
                return
            if event.stream_ended is not None:
                if stream.body_left:  # ended short of its content-length
                    stream.malformed()
                    return
                stream.to_down.append(_END)
            elif not data:
                return
        elif isinstance(event, h2.events.TrailersReceived):
            if stream.body_left:  # trailers end the stream too: short of its content-length
                stream.malformed()
                return
            fields, grpc_status = h2rules.split_trailers(event.headers)
            stream.grpc_status = grpc_status or stream.grpc_status
            stream.to_down.append((TRAILERS, fields, 0))
        else:
            return
        stream.session.pump(stream)


class H2Pool:
    """h2 connections per (direction, destination): a new stream takes one with room, or a new one."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.conns: dict[tuple[str, Address], list[H2Upstream]] = {}

    def open(self, stream: Stream, dest: Address, direction: str, fields: Fields) -> None:
        key = (direction, dest)
        conns = self.conns.setdefault(key, [])
        for upstream in conns:
            if upstream.has_room():
                upstream.add(stream, fields)
                return
        if len(conns) >= h2rules.UPSTREAMS_PER_DESTINATION:
            stream.fail("", 503, "too many streams to this destination")
            return
        upstream = H2Upstream(self.proxy, self, key)
        conns.append(upstream)
        upstream.add(stream, fields)
        gevent.spawn(upstream.run)

    def remove(self, upstream: H2Upstream) -> None:
        conns = self.conns.get(upstream.key)
        if conns is not None and upstream in conns:
            conns.remove(upstream)
            if not conns:
                del self.conns[upstream.key]

    def expire_idle(self, now: float) -> None:
        """Close connections with no stream for UPSTREAM_IDLE_SECONDS (the watchdog calls this)."""
        for conns in list(self.conns.values()):
            for upstream in list(conns):
                if (
                    upstream.ready
                    and not upstream.streams
                    and now - upstream.idle_since > UPSTREAM_IDLE_SECONDS
                ):
                    upstream.close()


def serve_h2(proxy: Proxy, client: Client, first: bytes, dest: Address | None, direction: str) -> None:
    """Serve a client connection that opened with the HTTP/2 preface (`first` holds it)."""
    Session(proxy, client, dest, direction).run(first)
