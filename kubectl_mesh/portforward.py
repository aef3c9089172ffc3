"""One port of one pod through the API server's `pods/portforward`, as a byte stream.

The WebSocket flavour of the kubelet protocol (`v4.channel.k8s.io`, which the API server passes
through to the kubelet): channel 0 carries the port's data, channel 1 its errors; each message
starts with its channel byte, and each channel first carries the port number (uint16, little
endian). Frames and the handshake come from python-hyper's `wsproto` (sans-IO), the socket and
credentials from `kubectl_mesh.kube` (so every kubeconfig form `stat` accepts works here too).

Authorisation is the API server's: `create` on `pods/portforward` for the pod. A refusal is a
KubeError with the server's status and message.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from kubectl_mesh.kube import KubeError

if TYPE_CHECKING:
    from kubectl_mesh.kube import KubeClient

PROTOCOL = "v4.channel.k8s.io"
_DATA, _ERROR = 0, 1


class PortForward:
    """A connected stream to `port` in the pod; `recv()` returns b"" once the port closed."""

    def __init__(
        self, client: KubeClient, namespace: str, pod: str, port: int, timeout: float = 15.0
    ) -> None:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request

        self.port = port
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._data = bytearray()  # data for the caller, not yet returned
        self._message = bytearray()  # a message arriving in fragments
        self._seen_port = {_DATA: False, _ERROR: False}
        self.closed = False
        self.error: str | None = None
        conn = client.new_connection()
        conn.timeout = timeout
        host, target, headers = client.stream_request_parts(
            f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward?" + urlencode({"ports": port})
        )
        try:
            conn.connect()
        except OSError as exc:
            raise KubeError(
                f"cannot reach the Kubernetes API server at {client.config.server}: {exc}"
            ) from None
        assert conn.sock is not None
        self._sock: Any = conn.sock
        extra = [(k.lower().encode(), v.encode()) for k, v in headers.items() if k.lower() != "accept"]
        self._sock.sendall(self._ws.send(Request(host=host, target=target, subprotocols=[PROTOCOL],
                                                 extra_headers=extra)))  # fmt: skip
        status, body = 0, bytearray()
        accepted = False
        while not accepted:
            chunk = self._recv_raw()
            if not chunk:
                raise KubeError(f"port-forward to {namespace}/{pod}: the API server closed the connection")
            self._ws.receive_data(chunk)
            for event in self._ws.events():  # frames read with the 101 are handled here, not lost
                if isinstance(event, AcceptConnection):
                    self._sock.settimeout(None)
                    accepted = True
                elif isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise _refused(status, b"", namespace, pod)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise _refused(status, bytes(body), namespace, pod)
                else:
                    self._handle(event)

    def _recv_raw(self) -> bytes:
        try:
            return bytes(self._sock.recv(65536))
        except TimeoutError:
            raise KubeError("port-forward: the API server did not answer in time") from None
        except OSError as exc:
            raise KubeError(f"port-forward: {exc}") from None

    def _handle(self, event: Any) -> None:
        from wsproto.events import CloseConnection, Message, Ping

        if isinstance(event, CloseConnection):
            self.closed = True
        elif isinstance(event, Ping):
            self._sock.sendall(self._ws.send(event.response()))
        elif isinstance(event, Message):
            data = event.data.encode() if isinstance(event.data, str) else event.data
            self._message += data
            if not event.message_finished:
                return
            payload, self._message = bytes(self._message), bytearray()
            if not payload:
                return
            channel, body = payload[0], payload[1:]
            if channel in self._seen_port and not self._seen_port[channel]:
                self._seen_port[channel] = True  # the port number, sent first on each channel
                body = body[2:]
            if channel == _DATA:
                self._data += body
            elif channel == _ERROR and body:
                self.error = (self.error or "") + body.decode(errors="replace")

    def sendall(self, data: bytes) -> None:
        from wsproto.events import BytesMessage

        self._sock.sendall(self._ws.send(BytesMessage(data=bytes((_DATA,)) + data)))

    def recv(self) -> bytes:
        """Bytes from the port (blocking); b"" when it closed. An error the kubelet reported for
        the port (e.g. nothing listens on it) is a KubeError."""
        while not self._data:
            if self.error:
                raise KubeError(f"port-forward to port {self.port}: {self.error.strip()}")
            if self.closed:
                return b""
            chunk = self._recv_raw()
            if not chunk:
                self.closed = True
                continue
            self._ws.receive_data(chunk)
            for event in self._ws.events():
                self._handle(event)
        data, self._data = bytes(self._data), bytearray()
        return data

    def close(self) -> None:
        """Close the connection; safe from another thread (Ctrl-C), whose blocked recv() returns.

        No WebSocket close frame: writing to a TLS socket that another thread is reading is not
        safe with OpenSSL, and the API server treats the TCP close as the end of the stream."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _refused(status: int, body: bytes, namespace: str, pod: str) -> KubeError:
    message = ""
    try:
        message = str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        message = body.decode(errors="replace").strip()[:200]
    hint = ""
    if status == 403:
        hint = f"tapping needs `create` on pods/portforward in namespace {namespace} (kubectl auth can-i)"
    return KubeError(
        f"port-forward to pod {namespace}/{pod} refused (HTTP {status}): {message or 'no reason given'}",
        status=status,
        hint=hint,
    )
