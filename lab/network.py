"""The lab's host network: a bridge, per-pod namespaces and veths, routes and iptables chains.

Everything is named with the lab prefix, so `teardown()` finds and removes all of it, whether
or not the node agent is still alive. No lab address is routed anywhere but into the bridge:
pods have no default route, the host drops forwarding from the bridge to any other interface,
and a ClusterIP without ready endpoints is rejected on the host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

from lab.config import (
    BRIDGE,
    BRIDGE_IP,
    CHAIN_PREFIX,
    HAIRPIN_MARK,
    NETNS_PREFIX,
    POD_CIDR,
    PREFIX,
    SERVICE_CIDR,
    run,
)
from lab.services import SERVICES_CHAIN

ETC_NETNS = Path("/etc/netns")
FORWARD_CHAIN = f"{CHAIN_PREFIX}FORWARD"
OUTPUT_CHAIN = f"{CHAIN_PREFIX}OUTPUT"
POSTROUTING_CHAIN = f"{CHAIN_PREFIX}POSTROUTING"
# (table, built-in chain, lab chain) jumps, inserted first in the built-in chain.
JUMPS = (
    ("filter", "FORWARD", FORWARD_CHAIN),
    ("filter", "OUTPUT", OUTPUT_CHAIN),
    ("nat", "PREROUTING", SERVICES_CHAIN),
    ("nat", "OUTPUT", SERVICES_CHAIN),
    ("nat", "POSTROUTING", POSTROUTING_CHAIN),
)
_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def iptables(*args: str, check: bool = True) -> bool:
    return run("iptables", "-w", "5", *args, check=check).returncode == 0


def setup_host() -> str:
    """Bridge, routes, iptables chains, forwarding on. Returns ip_forward's previous value."""
    teardown_host_network()  # leftovers of a crashed run
    run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "add", f"{BRIDGE_IP}/{POD_CIDR.prefixlen}", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    # The service range goes into the bridge too: the host's OUTPUT DNAT needs a route to exist
    # before it rewrites the destination, and an unserved ClusterIP must never leave the machine.
    run("ip", "route", "add", str(SERVICE_CIDR), "dev", BRIDGE, "src", str(BRIDGE_IP))
    restore = f"""*filter
:{FORWARD_CHAIN} - [0:0]
:{OUTPUT_CHAIN} - [0:0]
-A {FORWARD_CHAIN} -d {SERVICE_CIDR} -p tcp -j REJECT --reject-with tcp-reset
-A {FORWARD_CHAIN} -d {SERVICE_CIDR} -j REJECT
-A {FORWARD_CHAIN} -i {BRIDGE} -o {BRIDGE} -j ACCEPT
-A {FORWARD_CHAIN} -i {BRIDGE} -j DROP
-A {FORWARD_CHAIN} -o {BRIDGE} -j DROP
-A {OUTPUT_CHAIN} -d {SERVICE_CIDR} -p tcp -j REJECT --reject-with tcp-reset
-A {OUTPUT_CHAIN} -d {SERVICE_CIDR} -j REJECT
COMMIT
*nat
:{SERVICES_CHAIN} - [0:0]
:{POSTROUTING_CHAIN} - [0:0]
-A {POSTROUTING_CHAIN} -m mark --mark {HAIRPIN_MARK} -j MASQUERADE
COMMIT
"""
    run("iptables-restore", "-w", "5", "--noflush", input=restore)
    for table, builtin, chain in JUMPS:
        iptables("-t", table, "-I", builtin, "1", "-j", chain)
    previous = _IP_FORWARD.read_text().strip()
    _IP_FORWARD.write_text("1\n")
    return previous


def _lab_chains(table: str) -> list[str]:
    out = run("iptables", "-w", "5", "-t", table, "-S", check=False).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith(f"-N {CHAIN_PREFIX}")]


def nat_chains() -> list[str]:
    return _lab_chains("nat")


def teardown_host_network(ip_forward: str | None = None) -> None:
    """Remove the lab's jumps, chains, bridge and routes; restore ip_forward if given."""
    for table, builtin, chain in JUMPS:
        while iptables("-t", table, "-D", builtin, "-j", chain, check=False):
            pass
    for table in ("nat", "filter"):
        chains = _lab_chains(table)
        if chains:
            restore = [f"*{table}"] + [f":{c} - [0:0]" for c in chains] + [f"-X {c}" for c in chains]
            run(
                "iptables-restore",
                "-w",
                "5",
                "--noflush",
                input="\n".join([*restore, "COMMIT", ""]),
                check=False,
            )
    for link in lab_links():
        run("ip", "link", "del", link, check=False)
    if ip_forward is not None:
        _IP_FORWARD.write_text(ip_forward + "\n")


def lab_links() -> list[str]:
    out = run("ip", "-o", "link", "show", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n.startswith(PREFIX)]


def lab_netns() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NETNS_PREFIX)]


def netns_pids(ns: str) -> list[int]:
    out = run("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def create_pod_netns(ns: str, veth: str, ip: str) -> None:
    """A pod's namespace: eth0 on the bridge with its address, loopback, a route to Services."""
    run("ip", "netns", "add", ns)
    run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    run("ip", "link", "set", veth, "master", BRIDGE, "up")
    # With br_netfilter, a pod's packet to its own Service is DNATed while still being bridged and
    # must leave through the port it came in: hairpin mode (what kubenet sets too).
    run("ip", "link", "set", "dev", veth, "type", "bridge_slave", "hairpin", "on")
    run("ip", "-n", ns, "addr", "add", f"{ip}/{POD_CIDR.prefixlen}", "dev", "eth0")
    run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", ns, "link", "set", "eth0", "up")
    run("ip", "-n", ns, "route", "add", str(SERVICE_CIDR), "via", str(BRIDGE_IP))
    # containerd's default for pods: any UID may bind low ports inside the pod.
    run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0")


def kill_pids(pids: list[int], grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, SIGKILL whatever is left."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if running(p)]
        if pids:
            time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def delete_pod_netns(ns: str, veth: str | None = None) -> None:
    kill_pids(netns_pids(ns), 0.5)
    run("ip", "netns", "del", ns, check=False)
    if veth:
        run("ip", "link", "del", veth, check=False)
    shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)


def teardown_all_pods(grace: float = 1.0) -> None:
    """Every lab pod namespace: kill its processes (all at once), delete it and its /etc/netns."""
    namespaces = lab_netns()
    pids = [p for ns in namespaces for p in netns_pids(ns)]
    kill_pids(pids, grace)
    for ns in namespaces:
        run("ip", "netns", "del", ns, check=False)
    if ETC_NETNS.is_dir():
        for d in ETC_NETNS.glob(f"{NETNS_PREFIX}*"):
            shutil.rmtree(d, ignore_errors=True)
