"""`mesh-proxy init`: apply (or print, or remove) the iptables redirection. Needs NET_ADMIN.

The rules come from `iptables.plan_rules` (pure); this module only runs `iptables`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections.abc import Sequence

from kubectl_mesh.contract import (
    PROXY_INBOUND_PORT,
    PROXY_OUTBOUND_PORT,
    PROXY_UID,
)
from kubectl_mesh.errors import MeshError
from kubectl_mesh.portlist import PortList
from kubectl_mesh.subnetlist import parse_subnets

from .config import ProxyConfigError
from .iptables import (
    DEFAULT_INBOUND_IGNORE,
    InitConfig,
    clean_rules,
    has_any,
    is_applied,
    plan_rules,
    render,
)


class InitError(MeshError):
    """The rules could not be applied (iptables missing or refusing); exit 1."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mesh-proxy init", description="Redirect the pod's TCP through the proxy."
    )
    p.add_argument("--proxy-uid", type=int, default=PROXY_UID, help="UID whose traffic is never redirected")
    p.add_argument("--inbound-port", type=int, default=PROXY_INBOUND_PORT, help="proxy inbound port")
    p.add_argument("--outbound-port", type=int, default=PROXY_OUTBOUND_PORT, help="proxy outbound port")
    p.add_argument("--inbound-ports-to-ignore", default="", help="extra inbound ports not redirected")
    p.add_argument("--outbound-ports-to-ignore", default="", help="outbound ports not redirected")
    p.add_argument("--subnets-to-ignore", default="", help="outbound destination subnets not redirected")
    p.add_argument("--dry-run", action="store_true", help="print the rules instead of applying them")
    p.add_argument("--clean", action="store_true", help="remove the rules this command adds")
    return p


def config_from_args(args: argparse.Namespace) -> InitConfig:
    for name in ("inbound_port", "outbound_port"):
        if not 0 < getattr(args, name) < 65536:
            raise ProxyConfigError(f"--{name.replace('_', '-')} out of range")
    if args.proxy_uid < 0:
        raise ProxyConfigError("--proxy-uid must be a UID")
    inbound = _ports("--inbound-ports-to-ignore", args.inbound_ports_to_ignore)
    return InitConfig(
        proxy_uid=args.proxy_uid,
        inbound_port=args.inbound_port,
        outbound_port=args.outbound_port,
        inbound_ports_to_ignore=DEFAULT_INBOUND_IGNORE | inbound,
        outbound_ports_to_ignore=_ports("--outbound-ports-to-ignore", args.outbound_ports_to_ignore),
        subnets_to_ignore=_subnets(args.subnets_to_ignore),
    )


def _ports(flag: str, text: str) -> PortList:
    try:
        return PortList.parse(text)
    except ValueError as error:
        raise ProxyConfigError(f"{flag}: {error}") from None


def _subnets(text: str) -> tuple[str, ...]:
    try:
        return parse_subnets(text)
    except ValueError as error:
        raise ProxyConfigError(f"--subnets-to-ignore: {error}") from None


def _iptables_save() -> str:
    return subprocess.run(["iptables-save", "-t", "nat"], check=True, capture_output=True, text=True).stdout


def _iptables(rule: list[str]) -> None:
    subprocess.run(["iptables", "-w", "5", "-t", "nat", *rule], check=True, capture_output=True, text=True)


def main(argv: Sequence[str]) -> int:
    """Plan and apply the rules; a bad flag raises ProxyConfigError, an iptables failure InitError."""
    args = _parser().parse_args(list(argv))
    config = config_from_args(args)
    rules = plan_rules(config)
    if args.dry_run and not args.clean:
        print(render(rules))
        return 0
    if shutil.which("iptables") is None or shutil.which("iptables-save") is None:
        raise InitError("iptables is not installed", "apt-get install -y iptables")
    try:
        saved = _iptables_save()
        if args.clean:
            commands = clean_rules(saved)
            if args.dry_run:
                print(render(commands))
                return 0
            for rule in commands:
                _iptables(rule)
            print(f"mesh-proxy init: removed {len(commands)} rules and chains")
            return 0
        if is_applied(saved, config):
            print("mesh-proxy init: rules already in place, nothing to do")
            return 0
        if has_any(saved):  # an earlier run with other settings, or a half-applied one
            for rule in clean_rules(saved):
                _iptables(rule)
        for rule in rules:
            _iptables(rule)
    except subprocess.CalledProcessError as error:
        detail = (error.stderr or "").strip().splitlines()
        raise InitError(f"{' '.join(error.cmd)} failed: {detail[-1] if detail else error}") from None
    print(f"mesh-proxy init: applied {len(rules)} rules")
    return 0
