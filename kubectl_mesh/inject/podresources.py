"""Pod-level resources (`spec.resources`, Kubernetes 1.32+) with the mesh's containers added. Pure.

The API server requires pod-level requests to cover the containers' aggregate requests and
pod-level limits to cover each container's limit. A pod whose budget only just covers its app
would be rejected once the proxy joins, so the injector adds the proxy's share: for each resource
the pod budgets, `max(budget + proxy, mesh-init)` (the proxy runs beside the app and every later
init container; mesh-init runs first, alone). A limit grows by the proxy's limit, or by its
request when it sets no limit there, so requests stay within limits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][-+]?[0-9]+)|([numkMGTPE]i?|Ki)?)$")
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}


def parse_quantity(text: Any) -> Decimal:
    """A Kubernetes quantity (`500m`, `1.5Gi`, `2e3`, `128974848`) as a Decimal; ValueError otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return Decimal(str(text))
    match = _QUANTITY.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number, exponent, suffix = Decimal(match[1]), match[2], match[3] or ""
    if exponent:
        return number.scaleb(int(exponent[1:]))
    if suffix in _BINARY:
        return number * (2 ** _BINARY[suffix])
    return number.scaleb(_DECIMAL[suffix])


def format_quantity(value: Decimal) -> str:
    """A canonical-looking text: whole Mi/Ki or units when exact, else milli-units, rounded up."""
    for suffix, shift in (("Gi", 30), ("Mi", 20), ("Ki", 10)):
        unit = Decimal(2**shift)
        if value >= unit and value % unit == 0:
            return f"{int(value / unit)}{suffix}"
    if value == value.to_integral_value():
        return str(int(value))
    milli = (value * 1000).to_integral_value(rounding="ROUND_CEILING")
    return f"{int(milli)}m"


def with_mesh_share(
    pod_resources: Mapping[str, Any],
    proxy: Mapping[str, Mapping[str, str]],
    init: Mapping[str, Mapping[str, str]],
) -> dict[str, Any]:
    """`spec.resources` grown by the proxy's share (module doc); ValueError on a bad quantity."""
    out: dict[str, Any] = dict(pod_resources)
    for section in ("requests", "limits"):
        budget = pod_resources.get(section)
        if not isinstance(budget, Mapping) or not budget:
            continue
        grown = dict(budget)
        for name, amount in budget.items():
            extra = _amount(proxy, section, name)
            floor = _amount(init, section, name)
            total = max(parse_quantity(amount) + extra, floor)
            if total != parse_quantity(amount):
                grown[name] = format_quantity(total)
        out[section] = grown
    return out


def _amount(resources: Mapping[str, Mapping[str, str]], section: str, name: str) -> Decimal:
    """A container's amount of `name` in `section`; a limit it does not set counts as its request."""
    value = resources.get(section, {}).get(name)
    if value is None and section == "limits":
        value = resources.get("requests", {}).get(name)
    return parse_quantity(value) if value is not None else Decimal(0)
