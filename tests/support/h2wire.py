"""HTTP/2 bytes as a test reads them off a socket: what a peer sent until it closed, and its frames."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

from hyperframe.frame import Frame, GoAwayFrame


def chunks_until_closed(sock: socket.socket, seconds: float) -> Iterator[bytes]:
    """Each read of what the peer sends, until it closes, resets, or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return
        if not data:
            return
        yield data


def bytes_until_closed(sock: socket.socket, seconds: float) -> bytes:
    """Everything the peer sends until it closes, resets, or `seconds` pass."""
    return b"".join(chunks_until_closed(sock, seconds))


def parse_frames(raw: bytes) -> list[Frame]:
    """The whole frames in bytes a server sent (no preface on that side); a cut-off tail is left out."""
    return split_frames(raw)[0]


def split_frames(raw: bytes) -> tuple[list[Frame], bytes]:
    """The whole frames in `raw`, and the cut-off tail (the start of the next frame) to read on."""
    frames = []
    view = memoryview(raw)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames, bytes(view)


def send_until_goaway(
    sock: socket.socket, batch: bytes, frames_per_batch: int, most: int, seconds: float = 30.0
) -> tuple[list[Frame], int]:
    """Send `batch` again and again until the peer answers GOAWAY or closes, `most` frames went,
    or `seconds` passed (a flood's test: how many frames it took): the frames received, and the
    number sent."""
    raw, sent = b"", 0
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while sent < most and time.monotonic() < deadline:
        if any(isinstance(f, GoAwayFrame) for f in parse_frames(raw)):
            break
        try:
            sock.sendall(batch)
            sent += frames_per_batch
            raw += sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
    return parse_frames(raw), sent
