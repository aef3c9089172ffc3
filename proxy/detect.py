"""Protocol detection on the first bytes of a connection. Pure.

HTTP/1.x starts with a method token and a space; prior-knowledge h2c (what gRPC without TLS
sends) starts with the client preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`; anything else (TLS,
a database handshake) is relayed as opaque TCP. A client that sends nothing for the detect
timeout is probably waiting for a server-speaks-first protocol (MySQL, SMTP): the I/O layer
decides that on the timeout, this module only judges bytes.
"""

from __future__ import annotations

from enum import Enum


class Protocol(Enum):
    HTTP1 = "http1"
    HTTP2 = "http2"
    OPAQUE = "opaque"
    NEED_MORE = "need_more"


HTTP_METHODS = frozenset(
    {
        b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
        b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"REPORT",
        b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"SEARCH", b"PURGE", b"LINK", b"UNLINK",
    }
)  # fmt: skip
_MAX_METHOD = max(len(m) for m in HTTP_METHODS)
_PREFIXES = frozenset(m[:i] for m in HTTP_METHODS for i in range(1, len(m) + 1))
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def detect(first: bytes) -> Protocol:
    """Classify the bytes a client sent first."""
    if not first:
        return Protocol.NEED_MORE
    if first[:1] == b"P" and first[:3] in (b"P", b"PR", b"PRI"):  # PRI is no HTTP/1 method
        head = first[: len(H2_PREFACE)]
        if H2_PREFACE.startswith(head):
            return Protocol.HTTP2 if len(head) == len(H2_PREFACE) else Protocol.NEED_MORE
        return Protocol.OPAQUE
    space = first.find(b" ", 0, _MAX_METHOD + 1)
    if space == -1:
        if len(first) <= _MAX_METHOD and first in _PREFIXES:
            return Protocol.NEED_MORE
        return Protocol.OPAQUE
    return Protocol.HTTP1 if first[:space] in HTTP_METHODS else Protocol.OPAQUE
