"""A server TLS context that picks up a renewed certificate without a restart.

Kubernetes updates a mounted Secret by swapping a symlink; cert-manager or `kubectl mesh
install` may renew the pair at any time. Every handshake consults the files' identity (at most
once per `check_interval` seconds); when it changed, a new context is built from the files and
later handshakes switch to it from the SNI callback (the documented way to change a connection's
certificate). A half-written or mismatched pair is logged and ignored: the old one stays in use.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Callable

from webhook.logs import logger

_FileId = tuple[int, int, int, int]


class ReloadingTLS:
    def __init__(
        self,
        certfile: str,
        keyfile: str,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.certfile = certfile
        self.keyfile = keyfile
        self.check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = self._file_ids()
        self._current = self._build()  # raises if the initial pair is unusable: fail at start-up
        self._next_check = clock() + check_interval
        self._base: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        """The listening context: its SNI callback hands each handshake the newest context."""
        if self._base is None:
            base = self._build()
            base.sni_callback = self._on_client_hello
            self._base = base
        return self._base

    def current(self) -> ssl.SSLContext:
        """The newest good context, reloading from the files if they changed."""
        now = self._clock()
        if now >= self._next_check:
            with self._lock:
                if now >= self._next_check:
                    self._next_check = now + self.check_interval
                    self._maybe_reload()
        return self._current

    def _on_client_hello(
        self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        newest = self.current()
        if sock.context is not newest:
            sock.context = newest

    def _maybe_reload(self) -> None:
        try:
            ids = self._file_ids()
        except OSError as exc:
            logger().warning(
                "tls_reload_skipped",
                reason="TLS files unreadable, keeping the current certificate",
                error=exc,
            )
            return
        if ids == self._ids:
            return
        try:
            fresh = self._build()
        except (OSError, ssl.SSLError, ValueError) as exc:
            logger().warning(
                "tls_reload_skipped",
                reason="new TLS certificate not usable yet, keeping the current one",
                error=exc,
            )
            return  # retry at the next check: the other file of the pair may still be coming
        self._ids = ids
        self._current = fresh
        logger().info("tls_reloaded", cert=self.certfile)

    def _file_ids(self) -> tuple[_FileId, _FileId]:
        def ident(path: str) -> _FileId:
            st = os.stat(path)  # follows the Secret volume's symlinks
            return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)

        return ident(self.certfile), ident(self.keyfile)

    def _build(self) -> ssl.SSLContext:
        # `ssl.SSLContext` is looked up at call time, so in a gevent worker this is gevent's class.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")  # TLS 1.2 suites; 1.3 suites are all strong
        ctx.load_cert_chain(self.certfile, self.keyfile)
        return ctx
