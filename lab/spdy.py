"""SPDY/3.1 framing, server side, sans-IO: what `kubectl port-forward` speaks to the kubelet.

kubectl (client-go's tools/portforward, over moby/spdystream) upgrades the request to `SPDY/3.1`
with `X-Stream-Protocol-Version: portforward.k8s.io`, directly or tunnelled through the API
server's WebSocket, which hands the kubelet the same SPDY bytes. For every connection it forwards
it opens two streams (SYN_STREAM) with the headers `streamtype: error|data`, `port` and
`requestid`; the kubelet answers each (SYN_REPLY), relays the data stream's DATA frames to the
port and back, writes any failure as text on the error stream, and ends both with FIN.

Frames (draft 3): a control frame is `1 | version(15) | type(16) | flags(8) | length(24) | data`,
a data frame `0 | stream-id(31) | flags(8) | length(24) | data`. Header blocks are
`count(32) (len(32) name len(32) value)*`, zlib-compressed with the protocol's dictionary over one
stream per direction and connection (each block ends with a sync flush). spdystream does no flow
control (it never sends WINDOW_UPDATE and ignores it), so neither does this.

Only bytes in, events and bytes out: `lab/portforward.py` does the I/O.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
# RST_STREAM status codes
PROTOCOL_ERROR, REFUSED_STREAM, CANCEL = 1, 3, 5

MAX_FRAME = 1 << 20  # bytes held for one frame; kubectl writes 32 KiB at a time (io.Copy)
MAX_HEADER_BLOCK = 64 * 1024  # decompressed; a header block bigger than this is a protocol error
MAX_HEADERS = 100

_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base content-encoding "
    "content-language content-length content-location content-md5 content-range content-type date "
    "etag expect expires from host if-match if-modified-since if-none-match if-range "
    "if-unmodified-since last-modified location max-forwards pragma proxy-authenticate "
    "proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
    "user-agent vary via warning www-authenticate method get status |200 OK| version HTTP/1.1 url "
    "public set-cookie keep-alive origin"
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 "
    "Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service "
    "UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, "
    "Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,"
    "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch"
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _dictionary() -> bytes:
    """SPDY/3's zlib dictionary (draft 3, 2.6.10.1): 65 length-prefixed words, then a tail."""
    words = [w for part in _WORDS.split("|") for w in ([part] if part == "200 OK" else part.split())]
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + _TAIL.encode()


DICTIONARY = _dictionary()


class SpdyError(Exception):
    """The peer broke the protocol: the connection cannot go on (GOAWAY, then close)."""


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: dict[str, str]  # names lowercased; repeated values joined by NUL, as sent
    fin: bool


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes
    fin: bool


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_stream_id: int
    status: int


Event = SynStream | Data | RstStream | Ping | GoAway


class ServerConnection:
    """One SPDY/3.1 session seen from the server: feed it bytes, get events; ask it for frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, zdict=DICTIONARY)
        self.last_stream_id = 0  # the highest stream the client opened

    # --- in --------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Every whole frame in the bytes so far; a SpdyError when they break the protocol."""
        self._buffer.extend(data)
        events: list[Event] = []
        while len(self._buffer) >= 8:
            first, flags_length = struct.unpack_from(">II", self._buffer)
            flags, length = flags_length >> 24, flags_length & 0xFFFFFF
            if length > MAX_FRAME:
                raise SpdyError(f"a frame of {length} bytes (at most {MAX_FRAME})")
            if len(self._buffer) < 8 + length:
                break
            body = bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            if not first & 0x80000000:
                events.append(Data(first & 0x7FFFFFFF, body, bool(flags & FLAG_FIN)))
                continue
            version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
            if version != VERSION:
                raise SpdyError(f"SPDY version {version}, not {VERSION}")
            event = self._control(kind, flags, body)
            if event is not None:
                events.append(event)
        return events

    def _control(self, kind: int, flags: int, body: bytes) -> Event | None:
        if kind == SYN_STREAM:
            if len(body) < 10:
                raise SpdyError("short SYN_STREAM")
            stream_id = struct.unpack_from(">I", body)[0] & 0x7FFFFFFF
            if stream_id % 2 == 0 or stream_id <= self.last_stream_id:
                raise SpdyError(f"SYN_STREAM with stream id {stream_id} (after {self.last_stream_id})")
            self.last_stream_id = stream_id
            return SynStream(stream_id, self._headers(body[10:]), bool(flags & FLAG_FIN))
        if kind == RST_STREAM and len(body) == 8:
            stream_id, status = struct.unpack(">II", body)
            return RstStream(stream_id & 0x7FFFFFFF, status)
        if kind == PING and len(body) == 4:
            return Ping(struct.unpack(">I", body)[0])
        if kind == GOAWAY and len(body) >= 4:
            last = struct.unpack_from(">I", body)[0] & 0x7FFFFFFF
            return GoAway(last, struct.unpack_from(">I", body, 4)[0] if len(body) >= 8 else 0)
        if kind == HEADERS and len(body) >= 4:
            self._headers(body[4:])  # keeps the shared zlib stream in step; nothing to act on
            return None
        if kind in (SETTINGS, WINDOW_UPDATE, SYN_REPLY, HEADERS):
            return None  # no flow control, no settings to honour, no pushed streams
        if kind in (RST_STREAM, PING, GOAWAY):
            raise SpdyError(f"control frame {kind} of {len(body)} bytes")
        return None  # unknown control frames are ignored (draft 3, 2.2.1)

    def _headers(self, block: bytes) -> dict[str, str]:
        try:
            raw = self._inflate.decompress(block, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise SpdyError(f"header block: {exc}") from None
        if len(raw) > MAX_HEADER_BLOCK or self._inflate.unconsumed_tail:
            raise SpdyError(f"header block over {MAX_HEADER_BLOCK} bytes")
        try:
            (count,) = struct.unpack_from(">I", raw)
            if count > MAX_HEADERS:
                raise SpdyError(f"{count} headers")
            headers: dict[str, str] = {}
            at = 4
            for _ in range(count):
                (n,) = struct.unpack_from(">I", raw, at)
                name = raw[at + 4 : at + 4 + n]
                at += 4 + n
                (n,) = struct.unpack_from(">I", raw, at)
                value = raw[at + 4 : at + 4 + n]
                at += 4 + n
                if at > len(raw):
                    raise SpdyError("header block shorter than its lengths")
                headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        except struct.error:
            raise SpdyError("header block shorter than its lengths") from None
        return headers

    # --- out -------------------------------------------------------------------------------

    def _control_frame(self, kind: int, flags: int, body: bytes) -> bytes:
        return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(body)) + body

    def header_block(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers)) + b"".join(
            struct.pack(">I", len(k)) + k.encode("latin-1") + struct.pack(">I", len(v)) + v.encode("latin-1")
            for k, v in headers.items()
        )
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def syn_reply(self, stream_id: int, headers: dict[str, str] | None = None, fin: bool = False) -> bytes:
        body = struct.pack(">I", stream_id) + self.header_block(headers or {})
        return self._control_frame(SYN_REPLY, FLAG_FIN if fin else 0, body)

    def data(self, stream_id: int, payload: bytes, fin: bool = False) -> bytes:
        """DATA frames of at most 64 KiB each (the last one with FIN when asked)."""
        chunks = [payload[i : i + 65536] for i in range(0, len(payload), 65536)] or [b""]
        frames = []
        for i, chunk in enumerate(chunks):
            flags = FLAG_FIN if fin and i == len(chunks) - 1 else 0
            frames.append(struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(chunk)) + chunk)
        return b"".join(frames)

    def rst_stream(self, stream_id: int, status: int) -> bytes:
        return self._control_frame(RST_STREAM, 0, struct.pack(">II", stream_id, status))

    def ping(self, ping_id: int) -> bytes:
        return self._control_frame(PING, 0, struct.pack(">I", ping_id))

    def goaway(self, status: int = 0) -> bytes:
        return self._control_frame(GOAWAY, 0, struct.pack(">II", self.last_stream_id, status))
