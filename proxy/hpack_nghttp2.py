"""HPACK in C for h2's connections: nghttp2's encoder and decoder, through cffi in ABI mode.

python-hyper's `h2` keeps the protocol (frames, stream states, flow control); it codes header
blocks through its connection's `encoder` and `decoder` objects, pure Python from `hpack`. Those
were about a fifth of a proxied stream's CPU (`make bench-proxy ARGS=--profile-h2`): nginx
answers with Huffman-coded literals that `hpack` decodes bit by bit. `Encoder` and `Decoder`
here have the interface h2 uses and do the work in libnghttp2 (Debian's `libnghttp2-14`, which
`Dockerfile.proxy` installs; cffi's ABI mode opens it at run time, no compiler anywhere).

Without the library (`$MESH_NGHTTP2_LIBRARY` names another file, or empty: none), `install`
leaves h2's own coders in place: the same bytes on the wire, more CPU. The `ready` log line says
which (`hpack=`).

h2's contract, kept: a header list larger than `max_header_list_size` decoded (RFC 7541's size:
name + value + 32 per field, HPACK bombs included) raises `OversizedHeaderListError` as soon as
it is exceeded (a decoder `decode_through` set up decodes the rest of the block instead, keeping
none of it, and marks the list `OVER_LIMIT`), any malformed block `HPACKDecodingError`; a field
the sender marked never-indexed comes out as `NeverIndexedHeaderTuple` and goes out never-indexed
again; a SETTINGS change of the peer's table size is signalled at the start of the next block.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
from collections.abc import Iterable
from typing import Any

import hpack
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError, HPACKError, OversizedHeaderListError
from hpack.hpack import decode_integer
from hpack.huffman_table import decode_huffman

LIBRARY_ENV = "MESH_NGHTTP2_LIBRARY"
DEFAULT_LIBRARY = "libnghttp2.so.14"
TABLE_SIZE = 4096  # the RFC's default; the encoder's table never grows past it, whatever the peer allows

_CDEF = """
typedef struct { uint8_t *name; uint8_t *value; size_t namelen; size_t valuelen; uint8_t flags; } nghttp2_nv;
typedef struct nghttp2_hd_deflater nghttp2_hd_deflater;
typedef struct nghttp2_hd_inflater nghttp2_hd_inflater;
typedef struct { int age; int version_num; const char *version_str; const char *proto_str; } nghttp2_info;
nghttp2_info *nghttp2_version(int least_version);
int nghttp2_hd_deflate_new(nghttp2_hd_deflater **deflater_ptr, size_t max_deflate_dynamic_table_size);
void nghttp2_hd_deflate_del(nghttp2_hd_deflater *deflater);
int nghttp2_hd_deflate_change_table_size(nghttp2_hd_deflater *deflater, size_t settings_max);
ssize_t nghttp2_hd_deflate_hd(nghttp2_hd_deflater *deflater, uint8_t *buf, size_t buflen,
                              const nghttp2_nv *nva, size_t nvlen);
size_t nghttp2_hd_deflate_bound(nghttp2_hd_deflater *deflater, const nghttp2_nv *nva, size_t nvlen);
int nghttp2_hd_inflate_new(nghttp2_hd_inflater **inflater_ptr);
void nghttp2_hd_inflate_del(nghttp2_hd_inflater *inflater);
int nghttp2_hd_inflate_change_table_size(nghttp2_hd_inflater *inflater, size_t settings_max);
ssize_t nghttp2_hd_inflate_hd2(nghttp2_hd_inflater *inflater, nghttp2_nv *nv_out, int *inflate_flags,
                               const uint8_t *in, size_t inlen, int in_final);
int nghttp2_hd_inflate_end_headers(nghttp2_hd_inflater *inflater);
size_t nghttp2_hd_inflate_get_num_table_entries(nghttp2_hd_inflater *inflater);
const nghttp2_nv *nghttp2_hd_inflate_get_table_entry(nghttp2_hd_inflater *inflater, size_t idx);
size_t nghttp2_hd_inflate_get_max_dynamic_table_size(nghttp2_hd_inflater *inflater);
"""
NV_FLAG_NO_INDEX = 0x01
INFLATE_FINAL = 0x01
INFLATE_EMIT = 0x02
# One nghttp2_nv as laid out in memory (two pointers, two size_t, a byte, padding to 8): encode
# packs the whole array with one struct call instead of five cffi attribute writes per field.
_NV = struct.Struct("PPNNB7x")
_FIELD_OVERHEAD = 32  # RFC 7541 §4.1
# nghttp2 refuses a string longer than this (NGHTTP2_HD_MAX_NV) as a malformed block; a block
# no longer than it cannot hold one, a longer one is decoded by `hpack` (Decoder._decode_long).
NGHTTP2_MAX_STRING = 65536
_STATIC_ENTRIES = 61


# The last field of a list decoded past its limit by a decoder `decode_through` set up: the fields
# up to the limit, then this. Its empty name is invalid, so no check ever lets it through.
OVER_LIMIT = (b"", b"")


class HPACKEncodingError(HPACKError):
    """nghttp2 refused to encode a header list (it never should: lists are bounded before)."""


_ffi: Any = None
_lib: Any = None
_version = ""


def load(path: str | None = None) -> str:
    """Open libnghttp2 once (`path`, else `$MESH_NGHTTP2_LIBRARY`, else the Debian soname).

    Returns its version ("" when it cannot be used: then h2 keeps its pure-Python coders)."""
    global _ffi, _lib, _version
    if _lib is not None:
        return _version
    name = os.environ.get(LIBRARY_ENV, DEFAULT_LIBRARY) if path is None else path
    if not name:
        return ""
    try:
        import cffi

        ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        lib = ffi.dlopen(name)
        version = ffi.string(lib.nghttp2_version(0).version_str).decode()
        for function in re.findall(r"(nghttp2_\w+)\(", _CDEF):  # all there now, not mid-connection
            getattr(lib, function)
    except (ImportError, OSError, AttributeError):
        return ""
    if _NV.size != ffi.sizeof("nghttp2_nv"):  # pragma: no cover - a platform with another layout
        return ""
    _ffi, _lib, _version = ffi, lib, version
    return version


def install(conn: Any) -> bool:
    """Give an h2 connection nghttp2's coders, if the library loaded; False: h2's own stay."""
    if not load():
        return False
    conn.encoder = Encoder()
    conn.decoder = Decoder()
    return True


def _require() -> None:
    if not load():
        raise RuntimeError(
            f"{DEFAULT_LIBRARY} is not available (${LIBRARY_ENV}: {os.environ.get(LIBRARY_ENV)!r})"
        )


class Encoder:
    """h2's `encoder`: `encode(headers)` to a header block, `header_table_size` from the peer's SETTINGS."""

    def __init__(self) -> None:
        _require()
        pointer = _ffi.new("nghttp2_hd_deflater **")
        if _lib.nghttp2_hd_deflate_new(pointer, TABLE_SIZE) != 0:
            raise MemoryError("nghttp2_hd_deflate_new")
        self._deflater = _ffi.gc(pointer[0], _lib.nghttp2_hd_deflate_del)
        self._size = TABLE_SIZE
        self._out = _ffi.new("uint8_t[]", 4096)  # grows to the largest block asked for
        self._out_len = 4096

    @property
    def header_table_size(self) -> int:
        return self._size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # The table in use is min(value, TABLE_SIZE); a change is signalled in the next block.
        if _lib.nghttp2_hd_deflate_change_table_size(self._deflater, value) != 0:
            raise MemoryError("nghttp2_hd_deflate_change_table_size")
        self._size = value

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        """One header block; a field: (name, value), a `HeaderTuple`, or (name, value, sensitive)."""
        parts: list[bytes] = []
        shape: list[tuple[int, int, int]] = []  # (name length, value length, flags) per field
        for field in headers:
            name, value = field[0], field[1]
            if name.__class__ is not bytes:
                name = _bytes(name)
            if value.__class__ is not bytes:
                value = _bytes(value)
            if field.__class__ is tuple:
                flag = NV_FLAG_NO_INDEX if len(field) > 2 and field[2] else 0
            else:
                flag = 0 if getattr(field, "indexable", True) else NV_FLAG_NO_INDEX
            parts.append(name)
            parts.append(value)
            shape.append((len(name), len(value), flag))
        count = len(shape)
        if not count:
            return self._deflate(_ffi.NULL, 0)
        blob = _ffi.from_buffer(b"".join(parts))  # every name and value in one buffer, alive until deflated
        at = int(_ffi.cast("uintptr_t", blob))
        values: list[int] = []
        for name_len, value_len, flag in shape:
            values += (at, at + name_len, name_len, value_len, flag)
            at += name_len + value_len
        return self._deflate(_ffi.from_buffer("nghttp2_nv[]", _pack(count)(*values)), count)

    def _deflate(self, nva: Any, count: int) -> bytes:
        bound = _lib.nghttp2_hd_deflate_bound(self._deflater, nva, count)
        if bound > self._out_len:
            self._out = _ffi.new("uint8_t[]", bound)
            self._out_len = bound
        written = _lib.nghttp2_hd_deflate_hd(self._deflater, self._out, self._out_len, nva, count)
        if written < 0:
            raise HPACKEncodingError(f"nghttp2 could not encode a header block ({written})")
        return _ffi.buffer(self._out, written)[:]


_PACKERS: dict[int, Any] = {}


def _pack(count: int) -> Any:
    """struct's packer of `count` nghttp2_nv (kept per count: header lists have a few sizes)."""
    packer = _PACKERS.get(count)
    if packer is None:
        packer = struct.Struct(_NV.format * count).pack
        if len(_PACKERS) < 256:
            _PACKERS[count] = packer
    return packer


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


class Decoder:
    """h2's `decoder`: `decode(block)` to a list of fields (bytes), bounded by `max_header_list_size`."""

    def __init__(self) -> None:
        _require()
        self._inflater = _new_inflater()
        self._nv = _ffi.new("nghttp2_nv *")
        self._nv_bytes = _ffi.buffer(self._nv)
        self._flags = _ffi.new("int *")
        self.max_header_list_size = 65536  # h2 sets its own at once
        self.through = False  # past the limit: decode on (the table stays in step), mark OVER_LIMIT
        self._max_table = TABLE_SIZE

    @property
    def max_allowed_table_size(self) -> int:
        return self._max_table

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, value: int) -> None:
        if _lib.nghttp2_hd_inflate_change_table_size(self._inflater, value) != 0:
            raise MemoryError("nghttp2_hd_inflate_change_table_size")
        self._max_table = value

    def decode(self, data: bytes, raw: bool = True) -> list[HeaderTuple | tuple[bytes, bytes]]:
        """The fields of one whole header block, as bytes (h2 asks for `raw`: the proxy decodes no text)."""
        inflate = _lib.nghttp2_hd_inflate_hd2
        inflater, nv, flags = self._inflater, self._nv, self._flags
        unpack, nv_bytes, string_at = _NV.unpack_from, self._nv_bytes, ctypes.string_at
        limit = self.max_header_list_size
        end = len(data)
        if end > NGHTTP2_MAX_STRING:
            return self._decode_long(data)
        block = _ffi.from_buffer("uint8_t[]", data)
        at = 0
        size = 0
        fields: list[HeaderTuple | tuple[bytes, bytes]] = []
        while True:
            used = inflate(inflater, nv, flags, block + at, end - at, 1)
            if used < 0:
                raise HPACKDecodingError(f"malformed header block (nghttp2 error {used})")
            at += used
            state = flags[0]
            if state & INFLATE_EMIT:
                name_at, value_at, name_len, value_len, nv_flags = unpack(nv_bytes)
                size += name_len + value_len + _FIELD_OVERHEAD
                if size > limit:
                    if self.through:
                        return self._drain(block, at, end, bool(state & INFLATE_FINAL), fields)
                    raise OversizedHeaderListError(f"A header list larger than {limit} has been received")
                name = string_at(name_at, name_len)
                value = string_at(value_at, value_len)
                if nv_flags & NV_FLAG_NO_INDEX:
                    fields.append(NeverIndexedHeaderTuple(name, value))
                else:
                    fields.append((name, value))
            if state & INFLATE_FINAL:
                _lib.nghttp2_hd_inflate_end_headers(inflater)
                return fields
            if used == 0 and not state & INFLATE_EMIT:  # pragma: no cover - nghttp2 made no progress
                raise HPACKDecodingError("truncated header block")

    def _drain(self, block: Any, at: int, end: int, final: bool, fields: list[Any]) -> list[Any]:
        """The rest of a block past the list's limit: every field decoded (the dynamic table must
        follow the encoder's, or every later block on the connection reads wrong), none kept."""
        inflate, inflater, nv, flags = _lib.nghttp2_hd_inflate_hd2, self._inflater, self._nv, self._flags
        while not final:
            used = inflate(inflater, nv, flags, block + at, end - at, 1)
            if used < 0:
                raise HPACKDecodingError(f"malformed header block (nghttp2 error {used})")
            at += used
            final = bool(flags[0] & INFLATE_FINAL)
            if used == 0 and not flags[0] & (INFLATE_EMIT | INFLATE_FINAL):  # pragma: no cover
                raise HPACKDecodingError("truncated header block")
        _lib.nghttp2_hd_inflate_end_headers(inflater)
        fields.append(OVER_LIMIT)
        return fields

    def _decode_long(self, data: bytes) -> list[HeaderTuple | tuple[bytes, bytes]]:
        """A block over 64 KiB, decoded by `hpack` from nghttp2's table, which then takes hpack's.

        Such a block may hold a string nghttp2 refuses (over NGHTTP2_HD_MAX_NV) that hpack, and
        so h2, decodes: an upstream's block is decoded whole (`decode_through`), and one app's
        70 KiB field must reset its own stream (h2proxy._well_formed), not end the connection every client
        shares with COMPRESSION_ERROR. Rare (a block that large is over the clients' limit), so
        slow is fine: the copy of the tables both ways is a few dozen fields at most."""
        kind = ThroughDecoder if self.through else hpack.Decoder
        theirs = kind(max_header_list_size=self.max_header_list_size)
        theirs.max_allowed_table_size = self._max_table
        table = theirs.header_table
        table.maxsize = _lib.nghttp2_hd_inflate_get_max_dynamic_table_size(self._inflater)
        count = _lib.nghttp2_hd_inflate_get_num_table_entries(self._inflater)
        for index in range(count, _STATIC_ENTRIES, -1):  # oldest first: the newest ends first
            entry = _lib.nghttp2_hd_inflate_get_table_entry(self._inflater, index)
            table.add(_ffi.buffer(entry.name, entry.namelen)[:], _ffi.buffer(entry.value, entry.valuelen)[:])
        fields: list[HeaderTuple | tuple[bytes, bytes]] = list(
            theirs.decode(data, raw=True)
        )  # HPACKError as h2 had it; the connection ends then
        # A fresh inflater holding hpack's table: a size update, then each entry, oldest first.
        refill = bytearray(_integer(table.maxsize, 5, 0x20))
        for name, value in reversed(table.dynamic_entries):
            refill += b"\x40" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value
        inflater = _new_inflater()
        if _lib.nghttp2_hd_inflate_change_table_size(inflater, self._max_table) != 0:
            raise MemoryError("nghttp2_hd_inflate_change_table_size")
        self._inflater = inflater
        keep = self.max_header_list_size
        self.max_header_list_size = 1 << 30  # the refill is the table (≤ its size), not a list
        try:
            self.decode(bytes(refill))
        finally:
            self.max_header_list_size = keep
        return fields


class ThroughDecoder(hpack.Decoder):
    """hpack's decoder, decoding a block past `max_header_list_size` to its end without keeping
    the fields beyond it (the list ends `OVER_LIMIT`): h2's pure-Python coder on an upstream
    connection, and the blocks over 64 KiB nghttp2 leaves to hpack. hpack itself stops mid-block,
    with its dynamic table half updated: only the connection's end could follow."""

    def decode(self, data: bytes, raw: bool = True) -> list[Any]:
        view = memoryview(data)
        fields: list[Any] = []
        size, at, end = 0, 0, len(data)
        started = over = False
        while at < end:
            first = data[at]
            header: Any = None
            if first & 0x80:
                header, used = self._decode_indexed(view[at:])
                at += used
            elif first & 0x40:
                header, at = self._literal(data, view, at, True)
            elif first & 0x20:
                if started:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                at += self._update_encoding_context(view[at:])
            else:
                header, at = self._literal(data, view, at, False)
            if header is None:
                continue
            started = True
            if not over:
                size += len(header[0]) + len(header[1]) + _FIELD_OVERHEAD
                over = size > self.max_header_list_size
                if not over:
                    fields.append(header)
        self._assert_valid_table_size()
        if over:
            fields.append(OVER_LIMIT)
        return fields

    def _literal(self, data: bytes, view: memoryview, at: int, index: bool) -> tuple[Any, int]:
        """hpack's `_decode_literal` read in place: the field at `at`, and where the next starts.
        hpack's copies the rest of the block for each literal (its memoryview to bytes), a cost
        that grew with the square of a block decoded through: 14 to 44 s for 1 MiB of 2-byte
        literals (tests/proxy/test_h2_adversarial_review.py)."""
        first = data[at]
        name_index = first & (0x3F if index else 0x0F)
        if name_index:
            number, used = decode_integer(view[at:], 6 if index else 4)
            name = self.header_table.get_by_index(number)[0]
            at += used
        else:
            name, at = _string(data, view, at + 1)
        value, at = _string(data, view, at)
        if index:
            self.header_table.add(name, value)
            return HeaderTuple(name, value), at
        if first & 0x10:
            return NeverIndexedHeaderTuple(name, value), at
        return HeaderTuple(name, value), at


def _string(data: bytes, view: memoryview, at: int) -> tuple[bytes, int]:
    """RFC 7541 §5.2's string literal at `at` (Huffman-coded or not), and the offset after it."""
    if at >= len(data):
        raise HPACKDecodingError("Truncated header block")
    length, used = decode_integer(view[at:], 7)
    start = at + used
    value = data[start : start + length]
    if len(value) != length:
        raise HPACKDecodingError("Truncated header block")
    if data[at] & 0x80:
        value = decode_huffman(value)
    return value, start + length


def decode_through(conn: Any, limit: int) -> None:
    """Make `conn`'s decoder keep a list up to `limit` and decode any longer one through to its
    end, marked OVER_LIMIT (h2proxy: an upstream connection, where one stream's list over the
    limit must fail that stream alone, never the connection every client shares)."""
    if isinstance(conn.decoder, Decoder):
        conn.decoder.through = True
    else:
        table = conn.decoder.max_allowed_table_size
        conn.decoder = ThroughDecoder()
        conn.decoder.max_allowed_table_size = table
    conn.decoder.max_header_list_size = limit


def _new_inflater() -> Any:
    pointer = _ffi.new("nghttp2_hd_inflater **")
    if _lib.nghttp2_hd_inflate_new(pointer) != 0:
        raise MemoryError("nghttp2_hd_inflate_new")
    return _ffi.gc(pointer[0], _lib.nghttp2_hd_inflate_del)


def _integer(value: int, prefix: int, first: int) -> bytes:
    """RFC 7541 §5.1: `value` on a `prefix`-bit prefix, `first` the representation's high bits."""
    encoded = bytearray(hpack.hpack.encode_integer(value, prefix))
    encoded[0] |= first
    return bytes(encoded)
