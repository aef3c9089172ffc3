"""nghttp2's own HTTP/2 session (libnghttp2.so.14) driven from Python through cffi's ABI mode.

For bench_h2_floor's `--core nghttp2`: what the proxy's two connections would cost if nghttp2
kept framing, stream states, flow control and HPACK, and Python only moved header lists and
bodies between them. ABI mode (no compiler, as proxy/hpack_nghttp2.py): the callbacks are
`ffi.callback` closures (`@ffi.def_extern` needs API mode), each a libffi trampoline into Python.

Bytes in with nghttp2_session_mem_recv, out with nghttp2_session_mem_send (1.52 has no `...2`
variants: they came in 1.60). Events reach the owner through four plain Python callables:
`on_headers(stream_id, fields, end_stream)` once a header block is whole, `on_data(stream_id,
chunk)`, `on_end(stream_id)` when a DATA frame ends its stream, `on_close(stream_id, error_code)`.
Bodies go out through one data provider per session whose read callback copies what `push`
queued, defers while nothing is queued, and ends the stream (DATA_FLAG_EOF) once `push(...,
end=True)` came and all was sent.

Checks on what arrives: nghttp2's own HTTP messaging rules (field characters, pseudo-headers,
connection fields, content-length; a malformed list resets its stream) and MAX_HEADER_LIST_SIZE
counted in `on_header`, as the proxy's decoder limits it; none of the proxy's flood budgets.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from typing import Any

_CDEF = """
typedef struct nghttp2_session nghttp2_session;
typedef struct nghttp2_session_callbacks nghttp2_session_callbacks;
typedef struct { uint8_t *name; uint8_t *value; size_t namelen; size_t valuelen; uint8_t flags; } nghttp2_nv;
typedef struct { int32_t settings_id; uint32_t value; } nghttp2_settings_entry;
typedef struct { size_t length; int32_t stream_id; uint8_t type; uint8_t flags; uint8_t reserved; }
    nghttp2_frame_hd;
typedef union { int fd; void *ptr; } nghttp2_data_source;
typedef ssize_t (*nghttp2_data_source_read_callback)(nghttp2_session *session, int32_t stream_id,
    uint8_t *buf, size_t length, uint32_t *data_flags, nghttp2_data_source *source, void *user_data);
typedef struct { nghttp2_data_source source; nghttp2_data_source_read_callback read_callback; }
    nghttp2_data_provider;

/* Every nghttp2_frame begins with its nghttp2_frame_hd (the union's members all start with it):
   the callbacks are declared with a pointer to that header, all they read. Names and values as
   char *, so that ffi.unpack gives bytes. */
typedef int (*frame_cb)(nghttp2_session *session, const nghttp2_frame_hd *frame, void *user_data);
typedef int (*header_cb)(nghttp2_session *session, const nghttp2_frame_hd *frame, const char *name,
    size_t namelen, const char *value, size_t valuelen, uint8_t flags, void *user_data);
typedef int (*data_chunk_cb)(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    const char *data, size_t len, void *user_data);
typedef int (*stream_close_cb)(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
    void *user_data);

int nghttp2_session_callbacks_new(nghttp2_session_callbacks **callbacks_ptr);
void nghttp2_session_callbacks_del(nghttp2_session_callbacks *callbacks);
void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks *cbs, frame_cb cb);
void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks *cbs, header_cb cb);
void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks *cbs, frame_cb cb);
void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks *cbs,
    data_chunk_cb cb);
void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks *cbs,
    stream_close_cb cb);
int nghttp2_session_server_new(nghttp2_session **session_ptr, const nghttp2_session_callbacks *callbacks,
    void *user_data);
int nghttp2_session_client_new(nghttp2_session **session_ptr, const nghttp2_session_callbacks *callbacks,
    void *user_data);
void nghttp2_session_del(nghttp2_session *session);
ssize_t nghttp2_session_mem_recv(nghttp2_session *session, const uint8_t *in, size_t inlen);
ssize_t nghttp2_session_mem_send(nghttp2_session *session, const uint8_t **data_ptr);
int nghttp2_submit_settings(nghttp2_session *session, uint8_t flags, const nghttp2_settings_entry *iv,
    size_t niv);
int nghttp2_submit_window_update(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    int32_t window_size_increment);
int32_t nghttp2_submit_request(nghttp2_session *session, const void *pri_spec, const nghttp2_nv *nva,
    size_t nvlen, const nghttp2_data_provider *data_prd, void *stream_user_data);
int nghttp2_submit_response(nghttp2_session *session, int32_t stream_id, const nghttp2_nv *nva,
    size_t nvlen, const nghttp2_data_provider *data_prd);
int nghttp2_session_resume_data(nghttp2_session *session, int32_t stream_id);
const char *nghttp2_strerror(int lib_error_code);
"""

LIBRARY_ENV = "MESH_NGHTTP2_LIBRARY"  # as proxy/hpack_nghttp2.py
DEFAULT_LIBRARY = "libnghttp2.so.14"

# nghttp2.h's values
HEADERS, DATA = 0x01, 0x00
FLAG_END_STREAM = 0x01
DATA_FLAG_EOF = 0x01
ERR_DEFERRED = -508
ERR_TEMPORAL_CALLBACK_FAILURE = -521  # from a callback: that stream is reset, the session goes on
ERR_CALLBACK_FAILURE = -902  # from a callback: the session ends (mem_recv returns it)
SETTINGS_ENABLE_PUSH = 0x02
SETTINGS_MAX_CONCURRENT_STREAMS = 0x03
SETTINGS_INITIAL_WINDOW_SIZE = 0x04
SETTINGS_MAX_HEADER_LIST_SIZE = 0x06
DEFAULT_WINDOW = 65535
FIELD_OVERHEAD = 32  # RFC 7541 §4.1: what a field counts toward MAX_HEADER_LIST_SIZE beyond its bytes

# One nghttp2_nv in memory: two pointers, two size_t, a byte, padding (as hpack_nghttp2._NV).
_NV = struct.Struct("PPNNB7x")

_ffi: Any = None
_lib: Any = None


def load() -> bool:
    """Open libnghttp2 once ($MESH_NGHTTP2_LIBRARY, else the Debian soname); False if it cannot be."""
    global _ffi, _lib
    if _lib is not None:
        return True
    name = os.environ.get(LIBRARY_ENV, DEFAULT_LIBRARY)
    if not name:
        return False
    try:
        import cffi

        ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        lib = ffi.dlopen(name)
        lib.nghttp2_session_mem_recv  # noqa: B018 - all there now, or not at all
    except (ImportError, OSError, AttributeError):
        return False
    if ffi.sizeof("nghttp2_nv") != _NV.size:  # pragma: no cover - another platform's layout
        return False
    _ffi, _lib = ffi, lib
    return True


class NGHTTP2Error(RuntimeError):
    """nghttp2 refused a call (its negative error code, named by nghttp2_strerror)."""

    def __init__(self, call: str, code: int) -> None:
        super().__init__(f"{call}: {_ffi.string(_lib.nghttp2_strerror(code)).decode()} ({code})")


def _check(call: str, code: int) -> int:
    if code < 0:
        raise NGHTTP2Error(call, code)
    return code


def _nva(fields: Iterable[tuple[bytes, bytes]]) -> tuple[Any, int, Any]:
    """An nghttp2_nv array over one buffer of every name and value (nghttp2 copies both on
    submit, so the buffer, returned to be kept alive, only has to outlive the call)."""
    fields = list(fields)
    blob = _ffi.from_buffer(b"".join(name + value for name, value in fields))
    at = int(_ffi.cast("uintptr_t", blob))
    values: list[int] = []
    for name, value in fields:
        values += (at, at + len(name), len(name), len(value), 0)
        at += len(name) + len(value)
    packed = struct.pack(_NV.format * len(fields), *values)
    return _ffi.from_buffer("nghttp2_nv[]", packed), len(fields), (blob, packed)


HeadersHandler = Callable[[int, list[tuple[bytes, bytes]], bool], None]
DataHandler = Callable[[int, bytes], None]
EndHandler = Callable[[int], None]
CloseHandler = Callable[[int, int], None]


def _ignore(*_: Any) -> None:
    return None


class Session:
    """One nghttp2 session (server: facing a client; client: facing an upstream), in memory.

    `settings`: {SETTINGS id: value} sent first; `window`: the connection's receive window,
    opened from the RFC's 65,535 with a WINDOW_UPDATE as the proxy's `Side.start` does. Received
    DATA is acknowledged by nghttp2 itself as it is read (its automatic WINDOW_UPDATEs), as the
    proxy acknowledges a chunk once passed on: here, at once."""

    def __init__(
        self,
        server: bool,
        settings: dict[int, int],
        window: int = DEFAULT_WINDOW,
        max_header_list_size: int = 1 << 30,
    ) -> None:
        if not load():
            raise RuntimeError(f"{DEFAULT_LIBRARY} is not available (${LIBRARY_ENV})")
        self.on_headers: HeadersHandler = _ignore
        self.on_data: DataHandler = _ignore
        self.on_end: EndHandler = _ignore
        self.on_close: CloseHandler = _ignore
        self.max_header_list_size = max_header_list_size
        self._fields: dict[int, list[tuple[bytes, bytes]]] = {}  # header blocks arriving
        self._sizes: dict[int, int] = {}  # their RFC 7541 sizes so far
        self._out: dict[int, list[Any]] = {}  # stream: [bytes queued, ended, deferred]
        # The callbacks, kept alive as long as the session (nghttp2 holds their addresses).
        ffi = _ffi
        err = ERR_CALLBACK_FAILURE
        self._callbacks = (
            ffi.callback("frame_cb", self._begin_headers, error=err),
            ffi.callback("header_cb", self._header, error=err),
            ffi.callback("frame_cb", self._frame_recv, error=err),
            ffi.callback("data_chunk_cb", self._data_chunk, error=err),
            ffi.callback("stream_close_cb", self._stream_close, error=err),
        )
        self._read = ffi.callback("nghttp2_data_source_read_callback", self._read_body, error=err)
        self._provider = ffi.new("nghttp2_data_provider *")
        self._provider.read_callback = self._read
        pointer = ffi.new("nghttp2_session_callbacks **")
        _check("nghttp2_session_callbacks_new", _lib.nghttp2_session_callbacks_new(pointer))
        callbacks = pointer[0]
        try:
            begin, header, frame, chunk, close = self._callbacks
            _lib.nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, begin)
            _lib.nghttp2_session_callbacks_set_on_header_callback(callbacks, header)
            _lib.nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, frame)
            _lib.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, chunk)
            _lib.nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, close)
            session = ffi.new("nghttp2_session **")
            new = _lib.nghttp2_session_server_new if server else _lib.nghttp2_session_client_new
            _check("nghttp2_session_new", new(session, callbacks, ffi.NULL))
        finally:
            _lib.nghttp2_session_callbacks_del(callbacks)  # the session keeps a copy
        self._session = ffi.gc(session[0], _lib.nghttp2_session_del)
        entries = ffi.new("nghttp2_settings_entry[]", list(settings.items()))
        _check(
            "nghttp2_submit_settings", _lib.nghttp2_submit_settings(self._session, 0, entries, len(settings))
        )
        if window > DEFAULT_WINDOW:
            _check(
                "nghttp2_submit_window_update",
                _lib.nghttp2_submit_window_update(self._session, 0, 0, window - DEFAULT_WINDOW),
            )
        self._sent = ffi.new("uint8_t **")

    # h2's names, so that bench_h2_floor.connect exchanges prefaces with either core.
    def receive_data(self, data: bytes) -> list[Any]:
        """Feed bytes read from the peer; what they mean reaches the `on_*` handlers meanwhile."""
        _check("nghttp2_session_mem_recv", _lib.nghttp2_session_mem_recv(self._session, data, len(data)))
        return []

    def data_to_send(self) -> bytes:
        """Every byte nghttp2 has to send now (frames serialized, DATA read from `push`'s queues)."""
        send, session, sent, buffer = _lib.nghttp2_session_mem_send, self._session, self._sent, _ffi.buffer
        parts: list[bytes] = []
        while True:
            length = _check("nghttp2_session_mem_send", send(session, sent))
            if not length:
                return b"".join(parts)
            parts.append(buffer(sent[0], length)[:])

    def submit_request(self, fields: Iterable[tuple[bytes, bytes]], end_stream: bool) -> int:
        """A new stream's request HEADERS; its body (if not `end_stream`) follows through `push`."""
        nva, count, _keep = _nva(fields)
        provider = _ffi.NULL if end_stream else self._provider
        stream_id: int = _check(
            "nghttp2_submit_request",
            _lib.nghttp2_submit_request(self._session, _ffi.NULL, nva, count, provider, _ffi.NULL),
        )
        if not end_stream:
            self._out[stream_id] = [bytearray(), False, False]
        return stream_id

    def submit_response(
        self, stream_id: int, fields: Iterable[tuple[bytes, bytes]], end_stream: bool
    ) -> None:
        """The response HEADERS of `stream_id`; its body (if not `end_stream`) follows through `push`."""
        nva, count, _keep = _nva(fields)
        provider = _ffi.NULL if end_stream else self._provider
        if not end_stream:
            self._out[stream_id] = [bytearray(), False, False]
        _check(
            "nghttp2_submit_response",
            _lib.nghttp2_submit_response(self._session, stream_id, nva, count, provider),
        )

    def push(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """Queue body bytes for `stream_id` (its end with `end`), for the next `data_to_send`."""
        out = self._out.get(stream_id)
        if out is None:  # reset meanwhile
            return
        out[0] += data
        if end:
            out[1] = True
        if out[2]:  # the read callback deferred the stream: nghttp2 reads again only when told
            out[2] = False
            _lib.nghttp2_session_resume_data(self._session, stream_id)

    # nghttp2's callbacks (a raised exception returns ERR_CALLBACK_FAILURE: the session fails).
    def _begin_headers(self, session: Any, frame: Any, user_data: Any) -> int:
        self._fields[frame.stream_id] = []
        self._sizes[frame.stream_id] = 0
        return 0

    def _header(
        self,
        session: Any,
        frame: Any,
        name: Any,
        namelen: int,
        value: Any,
        valuelen: int,
        flags: int,
        user_data: Any,
    ) -> int:
        stream_id = frame.stream_id
        size = self._sizes[stream_id] + namelen + valuelen + FIELD_OVERHEAD
        if size > self.max_header_list_size:  # the proxy's limit; this stream is reset, not the session
            return ERR_TEMPORAL_CALLBACK_FAILURE
        self._sizes[stream_id] = size
        self._fields[stream_id].append((_ffi.unpack(name, namelen), _ffi.unpack(value, valuelen)))
        return 0

    def _frame_recv(self, session: Any, frame: Any, user_data: Any) -> int:
        kind = frame.type
        if kind == HEADERS:
            stream_id = frame.stream_id
            del self._sizes[stream_id]
            self.on_headers(stream_id, self._fields.pop(stream_id), bool(frame.flags & FLAG_END_STREAM))
        elif kind == DATA and frame.flags & FLAG_END_STREAM:
            self.on_end(frame.stream_id)
        return 0

    def _data_chunk(
        self, session: Any, flags: int, stream_id: int, data: Any, length: int, user_data: Any
    ) -> int:
        self.on_data(stream_id, _ffi.unpack(data, length))
        return 0

    def _stream_close(self, session: Any, stream_id: int, error_code: int, user_data: Any) -> int:
        self._out.pop(stream_id, None)
        self._fields.pop(stream_id, None)
        self._sizes.pop(stream_id, None)
        self.on_close(stream_id, error_code)
        return 0

    def _read_body(
        self,
        session: Any,
        stream_id: int,
        buf: Any,
        length: int,
        data_flags: Any,
        source: Any,
        user_data: Any,
    ) -> int:
        out = self._out[stream_id]
        pending = out[0]
        if not pending:
            if out[1]:
                data_flags[0] |= DATA_FLAG_EOF
                return 0
            out[2] = True
            return ERR_DEFERRED
        count = min(length, len(pending))
        _ffi.memmove(buf, pending, count)
        del pending[:count]
        if not pending and out[1]:
            data_flags[0] |= DATA_FLAG_EOF
        return count
