"""Real servers for the proxy's integration tests, on loopback, each in its own thread.

`AppServer` is an HTTP/1.1 application (stdlib http.server) with routes that exercise what a
proxy must get right; `TcpServer` is a raw TCP server (echo, or server-speaks-first banner).
"""

from __future__ import annotations

import hashlib
import json
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: AppServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- helpers -------------------------------------------------------------------------------
    def _query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> tuple[int, str]:
        """Read the request body in pieces (Content-Length or chunked); returns (size, sha256)."""
        digest = hashlib.sha256()
        size = 0
        if self.headers.get("Transfer-Encoding", "").lower().endswith("chunked"):
            while True:
                line = self.rfile.readline(1024)
                length = int(line.split(b";")[0].strip(), 16)
                if length == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = length
                while remaining:
                    piece = self.rfile.read(min(remaining, 65536))
                    digest.update(piece)
                    size += len(piece)
                    remaining -= len(piece)
                self.rfile.readline(16)
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining:
                piece = self.rfile.read(min(remaining, 65536))
                if not piece:
                    break
                digest.update(piece)
                size += len(piece)
                remaining -= len(piece)
        return size, digest.hexdigest()

    # --- routes --------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.server.requests += 1
        path = urlsplit(self.path).path
        q = self._query()
        if path == "/headers":
            seen = {k.lower(): v for k, v in self.headers.items()}
            answer = {"headers": seen, "target": self.path, "client": self.client_address[1]}
            body = json.dumps(answer).encode()
            self._reply(200, body, {"Content-Type": "application/json", "X-Mesh-Dst": "evil/deployment/x/y"})
        elif path == "/status":
            self._reply(int(q.get("code", "200")), b"status\n")
        elif path == "/slow":
            time.sleep(float(q.get("s", "1")))
            self._reply(200, b"slow\n")
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            size = int(q.get("size", "0"))
            for i in range(int(q.get("n", "3"))):
                piece = f"chunk-{i};".encode() + b"p" * size
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"no length, ends at close\n")
            self.close_connection = True
        elif path == "/big":
            size = int(q.get("mib", "1")) * 1024 * 1024
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"x" * 65536
            sent = 0
            while sent < size:
                self.wfile.write(block)
                sent += len(block)
        elif path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:  # after the switch: a line-based "protocol" that shouts back
                line = self.rfile.readline(65536)
                if not line:
                    break
                self.wfile.write(line.upper())
                self.wfile.flush()
            self.close_connection = True
        else:
            self._reply(404, b"not found\n")

    def do_POST(self) -> None:
        self.server.requests += 1
        path = urlsplit(self.path).path
        if path == "/reject":  # answers without reading the body
            self._reply(413, b"too large\n", {"Connection": "close"})
            self.close_connection = True
            return
        size, digest = self._read_body()
        body = json.dumps({"size": size, "sha256": digest}).encode()
        self._reply(200, body, {"Content-Type": "application/json"})

    do_PUT = do_POST


class AppServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.requests = 0
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _TcpHandler(socketserver.BaseRequestHandler):
    server: TcpServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        if self.server.banner:
            sock.sendall(self.server.banner)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(b"echo:" + data)


class TcpServer(socketserver.ThreadingTCPServer):
    """Echoes with an `echo:` prefix; with `banner`, speaks first (like SMTP or MySQL)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, banner: bytes = b"") -> None:
        super().__init__(("127.0.0.1", 0), _TcpHandler)
        self.banner = banner
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


if __name__ == "__main__":  # run as a pod's app: python proxy_backends.py HOST PORT
    import sys

    AppServer(sys.argv[1], int(sys.argv[2]))
    threading.Event().wait()
