"""The desync oracle: a raw-socket HTTP/1.1 backend that records every request it parses.

It frames requests itself, strictly (Content-Length or chunked, nothing else), so a request
smuggled inside another one's body shows up here as one more recorded request. Every answer
names the request it answers (`X-Seen: <n>`, body `req-<n> <method> <target>`), so a client can
tell its own response from somebody else's.

Misbehaviours are attributes, set by a test before it sends traffic (see `DesyncBackend`).
One thread per connection, loopback only. Run as a script (`python desync_backend.py HOST PORT
RECORD_FILE`) it serves inside a network namespace and appends each request to RECORD_FILE as
a JSON line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/1\.([01])")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
MAX_LINE = 64 * 1024
MAX_HEADERS = 200
BLOCK = 64 * 1024


@dataclass(frozen=True)
class Seen:
    """One request as the backend parsed it."""

    seq: int  # 1-based, over the whole backend
    conn: int  # 1-based connection id
    index: int  # 1-based position on its connection
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    def mesh_headers(self) -> list[str]:
        return [n for n, _ in self.headers if n.lower().startswith("x-mesh-")]

    def to_json(self) -> str:
        fields = {**self.__dict__, "body": self.body.decode("latin-1")}
        return json.dumps(fields)

    @classmethod
    def from_json(cls, line: str) -> Seen:
        d = json.loads(line)
        d["headers"] = [tuple(h) for h in d["headers"]]
        d["body"] = d["body"].encode("latin-1")
        return cls(**d)


def pattern(size: int) -> Iterator[bytes]:
    """A large body with content that depends on the offset (a shifted byte is noticed)."""
    block = bytes(range(256)) * (BLOCK // 256)
    sent, n = 0, 0
    while sent < size:
        piece = (b"%08d" % n + block[8:])[: size - sent]
        yield piece
        sent += len(piece)
        n += 1


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern(size):
        digest.update(piece)
    return digest.hexdigest()


def chunked_body(data: bytes, size: int) -> bytes:
    """`data` framed as chunks of `size` bytes (the last may be shorter), with the last-chunk."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


class BadRequest(Exception):
    pass


class _Conn:
    """A buffered reader over one accepted socket."""

    def __init__(self, sock: socket.socket, read_delay: Callable[[], float]) -> None:
        self.sock = sock
        self.buf = b""
        self.read_delay = read_delay

    def _more(self, size: int = BLOCK) -> None:
        data = self.sock.recv(size)
        if not data:
            raise EOFError
        self.buf += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > MAX_LINE:
                raise BadRequest("line too long")
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        if b"\n" in line or b"\r" in line:
            raise BadRequest("bare CR or LF")
        return line

    def exact(self, n: int, slow: bool = False) -> bytes:
        while len(self.buf) < n:
            if slow and self.read_delay():
                time.sleep(self.read_delay())
                self._more(4096)
            else:
                self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


class DesyncBackend:
    """Records every request it parses; misbehaves on request.

    Behaviour (set before traffic):
      status         status code of every answer (3 digits: 999 and 099 are fine for llhttp)
      after_response bytes sent after each answer: a whole extra response, or junk
      after_delay    seconds to wait before sending `after_response` (0: with the answer)
      drop_nth       on the Nth request of each connection: read it whole, then close unanswered
      hang           read requests and never answer (until the peer closes)
      body_size      answer with this many bytes of `pattern` instead of the naming body
      body_delay     seconds between 64 KiB blocks of a `body_size` answer
      chunk_size     with `body_size`: the answer is chunked, in chunks of this many bytes,
                     head and all chunks written in one go
      answer_delay   seconds to wait before each answer (read when the answer is due)
      answer_before_body  answer a request with a body as soon as its head is read, then read
                     the body (recorded as usual; the answer's X-Seen is the seq the request
                     is about to get, exact while one request at a time is in flight)
      read_delay     seconds between 4 KiB reads of a request body
      extra_headers  added to every answer (e.g. a forged x-mesh-dst)
    Records: `requests` (Seen, in parse order), `connections` (accepted), `errors` (parse errors).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, record: str | None = None) -> None:
        self.status = 200
        self.after_response = b""
        self.after_delay = 0.0
        self.drop_nth = 0
        self.hang = False
        self.body_size: int | None = None
        self.body_delay = 0.0
        self.chunk_size = 0
        self.answer_delay = 0.0
        self.answer_before_body = False
        self.read_delay = 0.0
        self.extra_headers: list[tuple[str, str]] = []
        self.requests: list[Seen] = []
        self.connections = 0
        self.errors: list[str] = []
        self._record = record
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._listener = socket.create_server((host, port), backlog=512, reuse_port=False)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    # --- what the oracle saw --------------------------------------------------------------------
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self.requests)

    def settled(self, quiet: float = 0.2, limit: float = 3.0) -> list[Seen]:
        """The requests, once none has arrived for `quiet` seconds: a smuggled one is parsed late."""
        deadline = time.monotonic() + limit
        count = -1
        while count != len(self.requests) and time.monotonic() < deadline:
            count = len(self.requests)
            time.sleep(quiet)
        return self.seen()

    def targets(self) -> list[str]:
        return [r.target for r in self.settled()]

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    # --- serving --------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                conn_id = self.connections
                self._socks.add(sock)
            threading.Thread(target=self._serve, args=(sock, conn_id), daemon=True).start()

    def _serve(self, sock: socket.socket, conn_id: int) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, lambda: self.read_delay)
        index = 0
        try:
            while not self._stopped.is_set():
                index += 1
                try:
                    seen, close, answered = self._read_request(conn, conn_id, index)
                except EOFError:
                    return
                except BadRequest as error:
                    with self._lock:
                        self.errors.append(f"conn {conn_id}: {error}")
                    sock.sendall(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    return
                if self.drop_nth and index == self.drop_nth:
                    return  # the stale keep-alive race: the request was read, and nobody answers it
                if self.hang:
                    while sock.recv(BLOCK):
                        pass
                    return
                # Not a proxy: CONNECT is refused and the connection closed (as nginx does), so
                # what follows it is never read as requests; 2xx would make it a tunnel.
                close = close or seen.method == "CONNECT"
                if not answered:
                    if self.answer_delay:
                        time.sleep(self.answer_delay)
                    self._answer(sock, seen, close)
                if close:
                    return
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks.discard(sock)
            sock.close()

    def _read_request(self, conn: _Conn, conn_id: int, index: int) -> tuple[Seen, bool, bool]:
        """One request: (as parsed, close after it, already answered)."""
        line = conn.line()
        match = _REQUEST_LINE.fullmatch(line)
        if not match:
            raise BadRequest(f"bad request line {line[:80]!r}")
        method, target, minor = match.groups()
        headers: list[tuple[bytes, bytes]] = []
        while True:
            field = conn.line()
            if not field:
                break
            name, colon, value = field.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise BadRequest(f"bad header line {field[:80]!r}")
            headers.append((name, value.strip(b" \t")))
            if len(headers) > MAX_HEADERS:
                raise BadRequest("too many headers")
        lower: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            lower.setdefault(name.lower(), []).append(value)
        te, cl = lower.get(b"transfer-encoding"), lower.get(b"content-length")
        if te and cl:
            raise BadRequest("both Transfer-Encoding and Content-Length")
        if te and [v.lower() for v in te] != [b"chunked"]:
            raise BadRequest(f"unsupported Transfer-Encoding {te!r}")
        if cl and (len(set(cl)) != 1 or not cl[0].isdigit()):
            raise BadRequest(f"bad Content-Length {cl!r}")
        tokens = b",".join(lower.get(b"connection", [])).lower()
        close = minor == b"0" or b"close" in [t.strip() for t in tokens.split(b",")]
        answered = self.answer_before_body and bool(te or (cl and cl[0] != b"0"))
        if answered:
            with self._lock:
                seq = len(self.requests) + 1
            early = Seen(seq, conn_id, index, method.decode("latin-1"), target.decode("latin-1"), [], b"")
            self._answer(conn.sock, early, close)
        if te:
            body = self._read_chunked(conn)
        elif cl:
            body = conn.exact(int(cl[0]), slow=True)
        else:
            body = b""
        with self._lock:
            seen = Seen(
                seq=len(self.requests) + 1,
                conn=conn_id,
                index=index,
                method=method.decode("latin-1"),
                target=target.decode("latin-1"),
                headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
                body=body,
            )
            self.requests.append(seen)
        if self._record:
            with open(self._record, "a") as f:
                f.write(seen.to_json() + "\n")
        return seen, close, answered

    def _read_chunked(self, conn: _Conn) -> bytes:
        parts: list[bytes] = []
        while True:
            size_text = conn.line().split(b";", 1)[0].strip()
            if not size_text or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
                raise BadRequest(f"bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                while conn.line():  # trailer fields, up to the empty line
                    pass
                return b"".join(parts)
            parts.append(conn.exact(size, slow=True))
            if conn.exact(2) != b"\r\n":
                raise BadRequest("chunk not followed by CRLF")

    def _answer(self, sock: socket.socket, seen: Seen, close: bool) -> None:
        after, delay = self.after_response, self.after_delay  # as set when the request came
        size = self.body_size
        body = b"" if size is not None else f"req-{seen.seq} {seen.method} {seen.target}".encode("latin-1")
        length = size if size is not None else len(body)
        status = 405 if seen.method == "CONNECT" else self.status
        head = [f"HTTP/1.1 {status:03d} Whatever", f"X-Seen: {seen.seq}", f"X-Conn: {seen.conn}"]
        head += [f"{n}: {v}" for n, v in self.extra_headers]
        chunked = size is not None and self.chunk_size > 0
        head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
        if close:
            head.append("Connection: close")
        out = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if seen.method == "HEAD":
            sock.sendall(out)
        elif size is None:
            sock.sendall(out + body)
        elif chunked:
            sock.sendall(out + chunked_body(b"".join(pattern(size)), self.chunk_size))
        else:
            sock.sendall(out)
            for piece in pattern(size):
                sock.sendall(piece)
                if self.body_delay:
                    time.sleep(self.body_delay)
        if after:
            time.sleep(delay)
            sock.sendall(after)


if __name__ == "__main__":  # as a pod's app: python desync_backend.py HOST PORT RECORD_FILE
    DesyncBackend(sys.argv[1], int(sys.argv[2]), record=sys.argv[3])
    threading.Event().wait()
