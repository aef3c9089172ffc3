"""The iptables nat rules of the init step, as data. Pure: `plan_rules()` is unit-tested.

Modelled on Linkerd's proxy-init: inbound TCP is redirected to the proxy's inbound port
except ignored ports; outbound TCP is redirected to the outbound port except the proxy's own
traffic (by UID), loopback, and ignored ports and subnets. Our chains hang off PREROUTING and
OUTPUT by one jump each, so applying twice or cleaning up touches only our chains.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass, field

from kubectl_mesh.contract import (
    DEFAULT_INBOUND_PORTS_TO_IGNORE,
    PROXY_INBOUND_PORT,
    PROXY_OUTBOUND_PORT,
    PROXY_UID,
)
from kubectl_mesh.portlist import NO_PORTS, PortList

INBOUND_CHAIN = "MESH_INBOUND_REDIRECT"
OUTPUT_CHAIN = "MESH_OUTPUT"
COMMENT = "kubectl-mesh"
DEFAULT_INBOUND_IGNORE = PortList.of(DEFAULT_INBOUND_PORTS_TO_IGNORE)


@dataclass(frozen=True)
class InitConfig:
    proxy_uid: int = PROXY_UID
    inbound_port: int = PROXY_INBOUND_PORT
    outbound_port: int = PROXY_OUTBOUND_PORT
    inbound_ports_to_ignore: PortList = DEFAULT_INBOUND_IGNORE
    outbound_ports_to_ignore: PortList = NO_PORTS
    subnets_to_ignore: tuple[str, ...] = field(default_factory=tuple)


def _port_groups(ports: PortList) -> list[str]:
    """multiport accepts at most 15 ports per rule; ranges count double, so use groups of 7 ranges."""
    ranges = [str(low) if low == high else f"{low}:{high}" for low, high in ports.spans]
    return [",".join(ranges[k : k + 7]) for k in range(0, len(ranges), 7)]


def plan_signature(config: InitConfig) -> str:
    """Names the settings in every rule's comment, so a re-run can tell "same rules" from "stale"."""
    return hashlib.sha256(repr(config).encode()).hexdigest()[:12]


def plan_rules(config: InitConfig) -> list[list[str]]:
    """The `iptables -t nat` argument lists, in order, that set up redirection from scratch."""
    comment = ["-m", "comment", "--comment", f"{COMMENT}:{plan_signature(config)}"]
    rules: list[list[str]] = [["-N", INBOUND_CHAIN], ["-N", OUTPUT_CHAIN]]
    # Inbound: everything arriving for this pod, except ignored ports, goes to the inbound listener.
    for group in _port_groups(config.inbound_ports_to_ignore):
        rules.append(
            ["-A", INBOUND_CHAIN, "-p", "tcp", "-m", "multiport", "--dports", group, "-j", "RETURN", *comment]
        )
    rules.append(
        ["-A", INBOUND_CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(config.inbound_port), *comment]
    )
    rules.append(["-A", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN, *comment])
    # Outbound: the proxy's own connections and loopback pass; the rest goes to the outbound listener.
    rules.append(
        ["-A", OUTPUT_CHAIN, "-m", "owner", "--uid-owner", str(config.proxy_uid), "-j", "RETURN", *comment]
    )
    rules.append(["-A", OUTPUT_CHAIN, "-o", "lo", "-j", "RETURN", *comment])
    for group in _port_groups(config.outbound_ports_to_ignore):
        rules.append(
            ["-A", OUTPUT_CHAIN, "-p", "tcp", "-m", "multiport", "--dports", group, "-j", "RETURN", *comment]
        )
    for subnet in config.subnets_to_ignore:
        rules.append(["-A", OUTPUT_CHAIN, "-d", subnet, "-j", "RETURN", *comment])
    rules.append(
        ["-A", OUTPUT_CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(config.outbound_port), *comment]
    )
    rules.append(["-A", "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN, *comment])
    return rules


def clean_rules(save_output: str) -> list[list[str]]:
    """Given `iptables-save -t nat`, the commands that remove everything `plan_rules` added."""
    commands: list[list[str]] = []
    for line in save_output.splitlines():
        parts = shlex.split(line) if line.startswith("-A") else []
        jumps_to_ours = "-j" in parts[:-1] and parts[parts.index("-j") + 1] in (INBOUND_CHAIN, OUTPUT_CHAIN)
        if len(parts) > 2 and parts[0] == "-A" and parts[1] in ("PREROUTING", "OUTPUT") and jumps_to_ours:
            commands.append(["-D", *parts[1:]])
    chains = existing_chains(save_output)
    for chain in (INBOUND_CHAIN, OUTPUT_CHAIN):
        if chain in chains:
            commands.append(["-F", chain])
            commands.append(["-X", chain])
    return commands


def existing_chains(save_output: str) -> set[str]:
    return {line[1:].split()[0] for line in save_output.splitlines() if line.startswith(":")}


def is_applied(save_output: str, config: InitConfig) -> bool:
    """Whether exactly this plan is in the nat table already (the init step then does nothing)."""
    tag = f"{COMMENT}:{plan_signature(config)}"
    ours = [line for line in save_output.splitlines() if line.startswith("-A") and tag in line]
    expected = [rule for rule in plan_rules(config) if rule[0] == "-A"]
    return len(ours) == len(expected) and not has_any(save_output, besides=tag)


def has_any(save_output: str, besides: str = "") -> bool:
    """Whether any rule or chain of ours (other than those tagged `besides`) is present."""
    if not besides and existing_chains(save_output) & {INBOUND_CHAIN, OUTPUT_CHAIN}:
        return True
    for line in save_output.splitlines():
        if line.startswith("-A") and COMMENT + ":" in line and not (besides and besides in line):
            return True
    return False


def render(rules: list[list[str]]) -> str:
    return "\n".join("iptables -t nat " + " ".join(rule) for rule in rules)
