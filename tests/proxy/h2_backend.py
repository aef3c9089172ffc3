"""A scripted HTTP/2 (h2c) server on python-hyper's `h2`, for the proxy's stream-deadline and 1xx tests.

Each request path picks a behaviour; the server records what it saw of each stream (the request
head, body bytes, how it ended: `ended`, or the RST_STREAM code it received), so a test asserts
what the backend's side of the proxy got, not only what the client got back.

- `/ok`: 200 with body b"ok" at once.
- `/stall-head`: never answers.
- `/stall-body`: 200 and one DATA frame, then nothing.
- `/tick`: 200, then a DATA frame every `TICK` seconds, `TICKS` of them, then the end.
- `/early-hints`: 103 with a `link` field, then 200.
- `/continue`: 100 once the head came (`expect: 100-continue`), then 200 with the body's length
  once the body ended.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

TICK = 0.3
TICKS = 10


@dataclass
class Seen:
    """One stream as the backend saw it."""

    path: str
    headers: dict[str, str]
    body: int = 0
    ended: bool = False  # the request's END_STREAM came
    reset: int | None = None  # the RST_STREAM code the proxy sent, if any


@dataclass
class _Tick:
    stream_id: int
    left: int
    due: float


@dataclass
class H2Backend:
    port: int = 0
    streams: list[Seen] = field(default_factory=list)
    connections: int = 0  # accepted: the proxy's upstream h2 connections
    max_streams: int = 100  # SETTINGS_MAX_CONCURRENT_STREAMS (h2's default; gRPC servers set none)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()

    def by_path(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.streams if s.path == path]

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams}
        )
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        seen: dict[int, Seen] = {}
        ticks: list[_Tick] = []
        sock.settimeout(0.02)
        with sock:
            while not self.stopped.is_set():
                try:
                    data = sock.recv(65536)
                    if not data:
                        return
                    events = conn.receive_data(data)
                except TimeoutError:
                    events = []
                except (OSError, h2.exceptions.ProtocolError):
                    return
                for event in events:
                    self._on_event(conn, event, seen, ticks)
                self._send_more(conn)
                now = time.monotonic()
                for tick in list(ticks):
                    if tick.due <= now and seen[tick.stream_id].reset is None:
                        tick.left -= 1
                        conn.send_data(tick.stream_id, b"t", end_stream=tick.left == 0)
                        tick.due = now + TICK
                        if tick.left == 0:
                            ticks.remove(tick)
                    elif seen[tick.stream_id].reset is not None:
                        ticks.remove(tick)
                out = conn.data_to_send()
                if out:
                    try:
                        sock.sendall(out)
                    except OSError:
                        return

    def _send_more(self, conn: Any) -> None:
        """Each turn of a connection's loop (events read or not): a subclass sends what waits."""

    def _on_event(self, conn: Any, event: Any, seen: dict[int, Seen], ticks: list[_Tick]) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers)
            stream = Seen(headers.get(":path", ""), headers)
            with self.lock:
                self.streams.append(stream)
            seen[event.stream_id] = stream
            sid, path = event.stream_id, stream.path
            if path == "/ok":
                conn.send_headers(sid, [(":status", "200")])
                conn.send_data(sid, b"ok", end_stream=True)
            elif path == "/stall-body":
                conn.send_headers(sid, [(":status", "200")])
                conn.send_data(sid, b"first")
            elif path == "/tick":
                conn.send_headers(sid, [(":status", "200")])
                ticks.append(_Tick(sid, TICKS, time.monotonic() + TICK))
            elif path == "/early-hints":
                conn.send_headers(sid, [(":status", "103"), ("link", "</style.css>; rel=preload")])
                conn.send_headers(sid, [(":status", "200")])
                conn.send_data(sid, b"hinted", end_stream=True)
            elif path == "/continue":
                conn.send_headers(sid, [(":status", "100")])
        elif isinstance(event, h2.events.DataReceived):
            stream = seen[event.stream_id]
            stream.body += len(event.data)
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream = seen[event.stream_id]
            stream.ended = True
            if stream.path == "/continue":
                conn.send_headers(event.stream_id, [(":status", "200")])
                conn.send_data(event.stream_id, str(stream.body).encode(), end_stream=True)
        elif isinstance(event, h2.events.StreamReset) and event.stream_id in seen:
            seen[event.stream_id].reset = int(event.error_code)
