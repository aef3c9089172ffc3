"""The I/O of `tap` and `top`: which pods to tap, and one reader thread per pod's tap stream.

Each pod's proxy serves its tap on the pod's loopback (127.0.0.1:4190). The CLI reaches it through
the API server's `pods/portforward` (kubectl_mesh.portforward): whoever may port-forward to the
pod may tap it, and no one else. The demo's proxies run on this machine, so there the stream is a
plain TCP connection to each proxy's tap port. Either way a stream is an HTTP/1.0 `GET /tap?…`
whose answer is JSON lines until the proxy or the user ends it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from kubectl_mesh.errors import MeshError
from kubectl_mesh.tap.events import Event, Stream, TapOptions, parse_line

MAX_LINE = 1 << 20  # a longer line from a proxy is a broken stream


class ByteStream(Protocol):
    def sendall(self, data: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TapTarget:
    namespace: str
    pod: str


OpenStream = Callable[[TapTarget], ByteStream]


def pods_to_tap(
    get_json: Callable[..., dict[str, Any]], kind: str, name: str, namespace: str
) -> list[TapTarget]:
    """The running meshed pods of one workload (or the pod itself); a MeshError when there are none."""
    from kubectl_mesh.stat.sources import is_meshed, is_running, list_path, selector_matches

    if kind == "pod":
        pods = [get_json(f"{list_path('pod', namespace)}/{name}")]
    else:
        workload = get_json(f"{list_path(kind, namespace)}/{name}")
        selector = (workload.get("spec") or {}).get("selector")
        listed = get_json(list_path("pod", namespace)).get("items") or []
        pods = [
            p for p in listed if selector_matches(selector, (p.get("metadata") or {}).get("labels") or {})
        ]
    targets = [
        TapTarget(namespace, str((p.get("metadata") or {}).get("name", "")))
        for p in pods
        if is_running(p) and is_meshed(p)
    ]
    if not targets:
        raise MeshError(
            f'{kind} "{name}" in namespace "{namespace}" has no running meshed pod to tap',
            f"kubectl mesh stat {kind} {name} -n {namespace} --unmeshed shows its pods",
        )
    return sorted(targets, key=lambda t: t.pod)


def read_stream(stream: ByteStream, query: str) -> Iterator[Event]:
    """Ask for the tap and yield its events; a MeshError when the proxy refuses (its one line)."""
    stream.sendall(f"GET /tap?{query} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    buffer = bytearray()
    head_done = False
    while True:
        chunk = stream.recv()
        if not chunk:
            if not head_done:
                raise MeshError("the proxy closed the tap stream before answering")
            return
        buffer += chunk
        if not head_done:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_LINE:
                    raise MeshError("the proxy's tap answer has no end of headers")
                continue
            status_line = bytes(buffer[: buffer.find(b"\r\n")]).decode(errors="replace")
            body = bytes(buffer[end + 4 :])
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or parts[1] != "200":
                while chunk:  # the refusal's one-line reason follows; the proxy then closes
                    chunk = stream.recv()
                    body += chunk
                reason = body.decode(errors="replace").strip() or status_line
                raise MeshError(f"the proxy refused the tap: {reason}")
            head_done = True
            buffer = bytearray(body)
        while (newline := buffer.find(b"\n")) >= 0:
            line, buffer = bytes(buffer[:newline]), buffer[newline + 1 :]
            event = parse_line(line)
            if event is not None:
                yield event
        if len(buffer) > MAX_LINE:
            raise MeshError("the proxy sent a tap line over 1 MiB")


class TapSession:
    """Every target's stream read by its own thread into one queue, merged in arrival order.

    `events()` yields (stream, event) until every stream ended; a stream's failure is yielded as
    one error (the others go on). `close()` (Ctrl-C) closes every stream, which ends the threads.
    """

    def __init__(self, targets: list[TapTarget], open_stream: OpenStream, options: TapOptions) -> None:
        self.targets = targets
        self.streams = [Stream(i, t.pod, {}) for i, t in enumerate(targets)]
        self._queue: queue.Queue[tuple[Stream, Event | None, str | None]] = queue.Queue(maxsize=10_000)
        self._open_stream = open_stream
        self._query = options.query()
        self._opened: list[ByteStream] = []
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._read, args=(s, t), name=f"tap-{t.pod}", daemon=True)
            for s, t in zip(self.streams, targets, strict=True)
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, stream: Stream, target: TapTarget) -> None:
        error: str | None = None
        try:
            byte_stream = self._open_stream(target)
            with self._lock:
                if self._closed:
                    byte_stream.close()
                    return
                self._opened.append(byte_stream)
            for event in read_stream(byte_stream, self._query):
                self._queue.put((stream, event, None))
        except MeshError as exc:
            error = f"{exc.message} (hint: {exc.hint})" if exc.hint else exc.message
        except OSError as exc:
            error = str(exc) or type(exc).__name__
        except Exception as exc:  # any other failure ends this stream too, never the whole tap silently
            error = f"{type(exc).__name__}: {exc}"
        if not self._closed:
            self._queue.put((stream, None, f"{target.pod}: {error}" if error else None))

    def events(self, tick: float | None = None) -> Iterator[tuple[Stream | None, Event | None, str | None]]:
        """(stream, event, None) per event; (stream, None, error-or-None) when a stream ended;
        with `tick`, (None, None, None) after that many seconds without any (for redraws)."""
        running = len(self._threads)
        while running:
            try:
                item = self._queue.get(timeout=tick)
            except queue.Empty:
                yield None, None, None
                continue
            if item[1] is None:
                running -= 1
            yield item

    def close(self) -> None:
        with self._lock:
            self._closed = True
            opened = list(self._opened)
        for byte_stream in opened:
            with contextlib.suppress(Exception):
                byte_stream.close()


def port_forward_opener(client: Any, port: int) -> OpenStream:
    """Streams through the API server's pods/portforward (the cluster's way)."""
    from kubectl_mesh.portforward import PortForward

    return lambda target: PortForward(client, target.namespace, target.pod, port)


class _Socket:
    """A TCP connection as a ByteStream (the demo's proxies are on this machine)."""

    def __init__(self, host: str, port: int) -> None:
        import socket

        self._sock = socket.create_connection((host, port), timeout=10)
        self._sock.settimeout(None)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv(self) -> bytes:
        return self._sock.recv(65536)

    def close(self) -> None:
        import socket

        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def direct_opener(addresses: dict[str, tuple[str, int]]) -> OpenStream:
    """Streams straight to each pod's tap address (`pod name → (host, port)`)."""
    return lambda target: _Socket(*addresses[target.pod])
