"""`mesh-proxy run` settings: flags, with the injector's environment variables as fallbacks. Pure."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubectl_mesh.contract import (
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    ENV_OPAQUE_PORTS,
    ENV_POD_NAME,
    ENV_POD_NAMESPACE,
    ENV_WORKLOAD_KIND,
    ENV_WORKLOAD_NAME,
    LOG_FORMATS,
    LOG_LEVELS,
    PROXY_ADMIN_PORT,
    PROXY_INBOUND_PORT,
    PROXY_OUTBOUND_PORT,
    PROXY_TAP_PORT,
)
from kubectl_mesh.errors import MeshError
from kubectl_mesh.log import check_format, format_from_env
from kubectl_mesh.portlist import NO_PORTS, PortList

from .identity import Identity, identity_from_parts


class ProxyConfigError(MeshError, ValueError):
    """A setting that cannot work; `mesh-proxy` shows the message as one line and exits 2."""


@dataclass(frozen=True)
class ProxyConfig:
    inbound_addr: str = "0.0.0.0"
    inbound_port: int = PROXY_INBOUND_PORT
    outbound_addr: str = "127.0.0.1"
    outbound_port: int = PROXY_OUTBOUND_PORT
    admin_addr: str = "0.0.0.0"
    admin_port: int = PROXY_ADMIN_PORT
    tap_port: int = PROXY_TAP_PORT  # on 127.0.0.1 only (proxy/tap.py); 0: no tap
    identity: Identity | None = None
    opaque_ports: PortList = NO_PORTS
    inbound_forward: tuple[str, int] | None = None
    connect_timeout: float = 2.0
    response_timeout: float = 10.0
    detect_timeout: float = 1.0
    idle_timeout: float = 300.0
    header_timeout: float = 10.0
    max_connections: int = 0  # per listener; 0: from the descriptor limit (server.py)
    shutdown_grace: float = 20.0
    log_level: str = "info"
    log_format: str = "logfmt"  # kubectl_mesh/log.py: logfmt or json
    max_series: int = 2000
    series_idle_seconds: float = 600.0


def parse_ports(text: str, source: str = "opaque ports") -> PortList:
    """`"3306,5432"` or `"8000-8002"` → ports; ProxyConfigError naming `source` on anything else."""
    try:
        return PortList.parse(text)
    except ValueError as error:
        raise ProxyConfigError(f"{source}: {error}") from None


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProxyConfigError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    d = ProxyConfig()
    a = parser.add_argument
    a("--inbound-addr", default=d.inbound_addr, help="inbound listener address (default %(default)s)")
    a("--inbound-port", type=int, default=d.inbound_port, help="inbound listener port (default %(default)s)")
    a("--outbound-addr", default=d.outbound_addr, help="outbound listener address (default %(default)s)")
    a("--outbound-port", type=int, default=d.outbound_port, help="outbound listener port (%(default)s)")
    a("--admin-addr", default=d.admin_addr, help="admin listener address (default %(default)s)")
    a("--admin-port", type=int, default=d.admin_port, help="admin listener port (default %(default)s)")
    a("--tap-port", type=int, default=d.tap_port, help="tap listener port on 127.0.0.1, 0: off (%(default)s)")
    a("--namespace", help=f"this pod's namespace (env {ENV_POD_NAMESPACE})")
    a("--workload-kind", help=f"owning workload kind, e.g. deployment (env {ENV_WORKLOAD_KIND})")
    a("--workload-name", help=f"owning workload name (env {ENV_WORKLOAD_NAME})")
    a("--pod", help=f"this pod's name (env {ENV_POD_NAME})")
    a("--opaque-ports", help=f"ports relayed as TCP without protocol detection (env {ENV_OPAQUE_PORTS})")
    a("--inbound-forward", metavar="HOST:PORT", help="explicit mode: send every inbound connection here")
    a("--connect-timeout", type=float, default=d.connect_timeout, help="seconds to connect upstream")
    a("--response-timeout", type=float, default=d.response_timeout, help="seconds to response headers (504)")
    a("--detect-timeout", type=float, default=d.detect_timeout, help="seconds of client silence → opaque TCP")
    a("--idle-timeout", type=float, default=d.idle_timeout, help="seconds an idle keep-alive client may wait")
    a("--header-timeout", type=float, default=d.header_timeout, help="seconds to send a request head (408)")
    a(
        "--max-connections", type=int, default=d.max_connections,
        help="client connections per listener (default: from the descriptor limit)",
    )  # fmt: skip
    a("--shutdown-grace", type=float, default=d.shutdown_grace, help="seconds SIGTERM waits for requests")
    a("--log-level", choices=LOG_LEVELS, help=f"log level (env {ENV_LOG_LEVEL}, default info)")
    a("--log-format", choices=LOG_FORMATS, help=f"log lines (env {ENV_LOG_FORMAT}, default logfmt)")
    a("--max-series", type=int, default=d.max_series, help="cap on HTTP (and on TCP) metric series")
    a("--series-idle-seconds", type=float, default=d.series_idle_seconds, help="drop series idle this long")


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> ProxyConfig:
    """Flags win over the environment; identity is all-or-nothing (a partial one is an error)."""
    parts = (
        args.namespace or env.get(ENV_POD_NAMESPACE, ""),
        args.workload_kind or env.get(ENV_WORKLOAD_KIND, ""),
        args.workload_name or env.get(ENV_WORKLOAD_NAME, ""),
        args.pod or env.get(ENV_POD_NAME, ""),
    )
    identity = None
    if any(parts):
        identity = identity_from_parts(*parts)
        if identity is None:
            raise ProxyConfigError(
                "identity needs a valid namespace, workload kind, workload name and pod "
                f"(got {'/'.join(parts)!r})"
            )
    log_level = (args.log_level or env.get(ENV_LOG_LEVEL) or "info").lower()
    if log_level not in LOG_LEVELS:
        raise ProxyConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    try:
        log_format = (
            check_format(args.log_format, "--log-format") if args.log_format else format_from_env(env)
        )
    except ValueError as error:
        raise ProxyConfigError(str(error)) from None
    for name in ("inbound_port", "outbound_port", "admin_port", "tap_port"):
        if not 0 <= getattr(args, name) < 65536:
            raise ProxyConfigError(f"--{name.replace('_', '-')} out of range")
    if args.max_connections < 0:
        raise ProxyConfigError("--max-connections must not be negative")
    for name in ("connect_timeout", "response_timeout", "detect_timeout", "idle_timeout", "header_timeout"):
        if getattr(args, name) <= 0:
            raise ProxyConfigError(f"--{name.replace('_', '-')} must be positive")
    if args.opaque_ports is not None:
        opaque = parse_ports(args.opaque_ports, "--opaque-ports")
    else:
        opaque = parse_ports(env.get(ENV_OPAQUE_PORTS, ""), ENV_OPAQUE_PORTS)
    return ProxyConfig(
        inbound_addr=args.inbound_addr,
        inbound_port=args.inbound_port,
        outbound_addr=args.outbound_addr,
        outbound_port=args.outbound_port,
        admin_addr=args.admin_addr,
        admin_port=args.admin_port,
        tap_port=args.tap_port,
        identity=identity,
        opaque_ports=opaque,
        inbound_forward=parse_hostport(args.inbound_forward) if args.inbound_forward else None,
        connect_timeout=args.connect_timeout,
        response_timeout=args.response_timeout,
        detect_timeout=args.detect_timeout,
        idle_timeout=args.idle_timeout,
        header_timeout=args.header_timeout,
        max_connections=args.max_connections,
        shutdown_grace=max(0.0, args.shutdown_grace),
        log_level=log_level,
        log_format=log_format,
        max_series=max(10, args.max_series),
        series_idle_seconds=args.series_idle_seconds,
    )


def parse_run_args(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> ProxyConfig:
    parser = argparse.ArgumentParser(prog="mesh-proxy run")
    add_run_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)), env)
