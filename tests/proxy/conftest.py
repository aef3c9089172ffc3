"""Fixtures for the proxy tests: a real app server and proxies in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy.netns_pods import PodPair
from tests.proxy.proxy_backends import AppServer
from tests.support.proxy_process import CLIENT_ID, SERVER_ID, ProxyProcess, start_proxy


@pytest.fixture
def app() -> Iterator[AppServer]:
    server = AppServer()
    yield server
    server.stop()


@pytest.fixture
def server_proxy(app: AppServer, tmp_path: Path) -> Iterator[ProxyProcess]:
    """The app's sidecar: inbound in explicit mode, forwarding to the app."""
    proxy = start_proxy(
        tmp_path, "--inbound-forward", f"127.0.0.1:{app.port}", "--response-timeout", "2", identity=SERVER_ID
    )
    yield proxy
    proxy.stop()


@pytest.fixture
def client_proxy(tmp_path: Path) -> Iterator[ProxyProcess]:
    """A client's sidecar: outbound as an explicit HTTP forward proxy."""
    proxy = start_proxy(tmp_path, "--inbound-forward", "127.0.0.1:9", identity=CLIENT_ID)
    yield proxy
    proxy.stop()


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[PodPair]:
    """Two pods in network namespaces with the init step's iptables rules (transparent mode; root)."""
    pair = PodPair(tmp_path)
    try:
        pair.create()
        yield pair
    finally:
        pair.close()
