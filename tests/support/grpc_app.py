"""A real grpcio server for the HTTP/2 tests and bench: the four kinds of RPC, on raw bytes (no codegen).

It records what it received (each call's metadata, messages produced) so tests assert what the
app saw, not only what the client got back.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "mesh.test.Echo"
BIG = 64 * 1024  # one message of the Flood stream


class GrpcApp:
    """`Seen` answers the call's metadata as JSON; `Unary` echoes (b"fail:<code>" aborts with that
    code, b"sleep:<s>" sleeps); `ServerStream` sends b"<n>" as n messages (b"<n>:<s>": the first
    after s seconds); `ClientStream` joins what it gets; `Bidi` echoes each message; `Flood` sends
    up to 1000 messages of 64 KiB (counted in `flood_sent`)."""

    def __init__(self, address: str = "127.0.0.1:0") -> None:
        self.metadata: list[dict[str, str]] = []
        self.flood_sent = 0
        self.lock = threading.Lock()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
            "Flood": grpc.unary_stream_rpc_method_handler(self._flood),
            "Seen": grpc.unary_unary_rpc_method_handler(self._seen_metadata),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port(address)
        self.server.start()

    def _seen(self, context: Any) -> None:
        with self.lock:
            self.metadata.append({k: v for k, v in context.invocation_metadata()})

    def _unary(self, request: bytes, context: Any) -> bytes:
        self._seen(context)
        if request.startswith(b"fail:"):
            context.abort(_code(int(request[5:])), "asked to fail")
        if request.startswith(b"sleep:"):
            threading.Event().wait(float(request[6:]))
        return b"echo:" + request

    def _seen_metadata(self, request: bytes, context: Any) -> bytes:
        """The metadata this call arrived with, as JSON: for an app in another process."""
        self._seen(context)
        return json.dumps(self.metadata[-1]).encode()

    def _server_stream(self, request: bytes, context: Any) -> Iterator[bytes]:
        self._seen(context)
        count, _, delay = request.partition(b":")
        if delay:  # its first message (and so its response head) comes late
            threading.Event().wait(float(delay))
        for i in range(int(count)):
            yield b"%d" % i

    def _client_stream(self, requests: Iterator[bytes], context: Any) -> bytes:
        self._seen(context)
        return b"|".join(requests)

    def _bidi(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        self._seen(context)
        for message in requests:
            yield b"re:" + message

    def _flood(self, request: bytes, context: Any) -> Iterator[bytes]:
        self._seen(context)
        chunk = b"x" * BIG
        for _ in range(1000):
            if not context.is_active():
                return
            with self.lock:
                self.flood_sent += 1
            yield chunk

    def stop(self) -> None:
        self.server.stop(grace=None)


def _code(value: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == value)


def methods(channel: grpc.Channel) -> dict[str, Any]:
    """The test service's callables on `channel` (bytes in, bytes out)."""
    return {
        "unary": channel.unary_unary(f"/{SERVICE}/Unary"),
        "server_stream": channel.unary_stream(f"/{SERVICE}/ServerStream"),
        "client_stream": channel.stream_unary(f"/{SERVICE}/ClientStream"),
        "bidi": channel.stream_stream(f"/{SERVICE}/Bidi"),
        "flood": channel.unary_stream(f"/{SERVICE}/Flood"),
    }


def main() -> None:
    """`python tests/support/grpc_app.py PORT_FILE [HOST:PORT]`: serve until killed (the benchmark
    runs the server in its own process, off the client's GIL; the transparent tests in a pod)."""
    import sys
    from pathlib import Path

    app = GrpcApp(*sys.argv[2:3])
    Path(sys.argv[1]).write_text(str(app.port))
    threading.Event().wait()


if __name__ == "__main__":
    main()
