"""The one port-list type: `80,443,8000-8010` parsed once, held as ranges, formatted canonically.

Every port list in the mesh has this format: the mesh config's `skipInboundPorts`,
`skipOutboundPorts` and `opaquePorts`, the pod annotations of the same names, the proxy's
`MESH_OPAQUE_PORTS` / `--opaque-ports` and the init step's `--*-ports-to-ignore`. The injector
writes `str(PortList)`, the proxy and the init step read it back with `PortList.parse`.

Rules: comma-separated items, each a port or a range `low-high` (inclusive), 1-65535, ASCII
digits only (`"٨٠"` or `"²"` are not ports, though Python's `int` and `isdigit` take them);
blanks around items and around the dash are ignored, empty items skipped. The canonical text is
the items sorted and de-duplicated (`"3306, 25,25"` -> `"25,3306"`); ranges are kept as written,
not merged, so the text the injector writes does not change with this type. Pure.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

MIN_PORT = 1
MAX_PORT = 65535

_ITEM = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")


def _port(digits: str) -> int:
    # More digits than any port: out of range, without asking int() about a huge number.
    return int(digits) if len(digits) <= 10 else MAX_PORT + 1


@dataclass(frozen=True)
class PortList:
    """Ports as sorted, de-duplicated `(low, high)` ranges. Immutable and hashable.

    `port in ports`, `iter(ports)` (each port once, ascending), `len(ports)` (number of ports),
    `bool(ports)`, `ports | other`, `str(ports)` (the canonical text `parse` reads back).
    """

    ranges: tuple[tuple[int, int], ...] = ()
    # Overlapping and adjacent ranges merged, for `in` (bisect) and iteration; not compared.
    _merged: tuple[tuple[int, int], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for low, high in self.ranges:
            if not (MIN_PORT <= low <= high <= MAX_PORT):
                raise ValueError(f"{low}-{high} is not a port range within {MIN_PORT}-{MAX_PORT}")
        canonical = tuple(sorted(set(self.ranges)))
        object.__setattr__(self, "ranges", canonical)
        merged: list[tuple[int, int]] = []
        for low, high in canonical:
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        object.__setattr__(self, "_merged", tuple(merged))

    @classmethod
    def parse(cls, text: str) -> PortList:
        """`"80, 443,8000-8010"` -> PortList; ValueError naming the bad item on anything else."""
        ranges: list[tuple[int, int]] = []
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            match = _ITEM.fullmatch(item)
            if match is None:
                raise ValueError(f"{item!r} is not a port or a port range")
            low = _port(match[1])
            high = _port(match[2]) if match[2] is not None else low
            if not (MIN_PORT <= low <= MAX_PORT and MIN_PORT <= high <= MAX_PORT):
                raise ValueError(f"{item!r} is not within {MIN_PORT}-{MAX_PORT}")
            if low > high:
                raise ValueError(f"{item!r} is not a port range: {low} is above {high}")
            ranges.append((low, high))
        return cls(tuple(ranges))

    @classmethod
    def of(cls, ports: Iterable[int | tuple[int, int]]) -> PortList:
        """From ports and `(low, high)` ranges; ValueError on one outside 1-65535."""
        return cls(tuple(p if isinstance(p, tuple) else (p, p) for p in ports))

    def __str__(self) -> str:
        return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in self.ranges)

    def __repr__(self) -> str:
        return f"PortList({str(self)!r})"

    def __contains__(self, port: object) -> bool:
        if not isinstance(port, int):
            return False
        i = bisect.bisect_right(self._merged, (port, MAX_PORT + 1)) - 1
        return i >= 0 and self._merged[i][0] <= port <= self._merged[i][1]

    def __iter__(self) -> Iterator[int]:
        for low, high in self._merged:
            yield from range(low, high + 1)

    def __len__(self) -> int:
        return sum(high - low + 1 for low, high in self._merged)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __or__(self, other: PortList) -> PortList:
        return PortList(self.ranges + other.ranges)

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """The ports as disjoint, non-adjacent `(low, high)` ranges in ascending order."""
        return self._merged


NO_PORTS = PortList()
