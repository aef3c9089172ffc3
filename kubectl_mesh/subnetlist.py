"""The one subnet-list parser: `10.0.0.0/8, 192.168.1.1` to canonical IPv4 CIDRs.

One format, read in two places: the mesh config's `skipSubnets` (the injector writes it into
`mesh-proxy init --subnets-to-ignore`) and that flag in the init step. Parsing both with this
one function means a list the config accepts is one the init step accepts, with the same error.

Rules: comma-separated items, each an IPv4 address or network (`10.0.0.0/8`, `10.1.2.3/8` is
`10.0.0.0/8`, a bare address is a /32; a netmask `10.0.0.0/255.0.0.0` as iptables takes it);
blanks around items ignored, empty items skipped; ASCII only, as portlist (`"١٠.0.0.0/8"` is not
an address, though some Pythons' `ipaddress` read such digits). IPv6 is refused: the init step
writes iptables (IPv4) rules only, and an IPv6 network there would stop the pod's init step.
Order and duplicates are kept, so the text the injector writes does not change. Pure.
"""

from __future__ import annotations

import ipaddress


def parse_subnets(text: str) -> tuple[str, ...]:
    """`"10.0.0.0/8, 192.168.1.1"` -> `("10.0.0.0/8", "192.168.1.1/32")`; ValueError naming the
    bad item (`not an IPv4 subnet: 'x'`) on anything else."""
    subnets = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            if not item.isascii():
                raise ValueError(item)
            subnets.append(str(ipaddress.IPv4Network(item, strict=False)))
        except ValueError:
            raise ValueError(f"not an IPv4 subnet: {item!r}") from None
    return tuple(subnets)
