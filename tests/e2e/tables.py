"""Reading `kubectl mesh stat` tables back, as a user's eye would, and the truth to hold them to.

Shared by the demo's and the lab walkthrough's tests: both print sections of the form

    $ kubectl mesh stat …
    NAME  MESHED  SUCCESS  RPS  …
    web      1/1   92.50%  2.0rps …
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Row:
    cells: dict[str, str]

    @property
    def name(self) -> str:
        return self.cells["NAME"]

    @property
    def success(self) -> float | None:
        raw = self.cells["SUCCESS"]
        return None if raw == "-" else float(raw.rstrip("%")) / 100

    @property
    def rps(self) -> float | None:
        raw = self.cells["RPS"]
        return None if raw == "-" else float(raw.removesuffix("rps"))


def parse_sections(text: str) -> dict[str, list[Row]]:
    """`$ command` -> its table's rows ([] for "No traffic found.")."""
    sections: dict[str, list[Row]] = {}
    command: str | None = None
    headers: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("$ "):
            command, headers = line[2:].strip(), None
            sections[command] = []
        elif command is None or not line.strip() or line.strip() == "No traffic found.":
            continue
        elif headers is None:
            headers = line.split()
        else:
            cells = line.split()
            if len(cells) != len(headers):
                raise ValueError(f"row does not match the header {headers}: {line!r}")
            sections[command].append(Row(dict(zip(headers, cells, strict=True))))
    return sections


@dataclass(frozen=True)
class Truth:
    """What one side counted by itself between two snapshots of its counters."""

    requests: int
    failures: int
    seconds: float

    @property
    def success(self) -> float:
        return 1 - self.failures / self.requests if self.requests else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def truth(start: dict[str, Any], end: dict[str, Any], service: str, upstream: str | None = None) -> Truth:
    """`service`'s received traffic (upstream None) or what it sent to `upstream`, start → end."""

    def tally(snapshot: dict[str, Any]) -> dict[str, int]:
        counters = snapshot["services"][service]
        if upstream is None:
            return dict(counters["received"])
        return dict(counters["sent"].get(upstream, {"total": 0, "failures": 0}))

    a, b = tally(start), tally(end)
    return Truth(b["total"] - a["total"], b["failures"] - a["failures"], end["time"] - start["time"])


def success_tolerance(requests: int, window_s: float, scrape_s: float) -> float:
    """How far a success rate from the mesh may be from the services' own count of one window,
    when that count is read at the window's ends rather than at the proxy's scrapes (the topology
    tests: their apps keep no history).

    Prometheus sees the counters only at scrapes: `increase()` takes the samples inside the
    window (which may start and end up to one scrape interval inside it) and scales them to the
    whole window. The rate is unaffected; the success rate is that of the sampled part. The bot
    spreads its failing votes evenly, so any run of n requests fails floor or ceil of the share:
    the two rates differ by at most 1/n_sampled + 1/n, plus the 0.005 the table's rounding hides.
    """
    n = max(requests, 1)
    sampled = max(1.0, n * (window_s - 2 * scrape_s) / window_s)
    return 1 / sampled + 1 / n + 0.005


# Issue 13's bound on SUCCESS, held honestly because the truth is read at the instants Prometheus
# scraped the proxy (kubectl_mesh.demo.truth): both sides count the same calls, and what is left
# is stat's rounding of the counts `increase()` scaled to the window, at most 0.5 / requests
# (ok' = ok*f + e1, bad' = bad*f + e2, |e| <= 0.5: ok'/T' - ok/T = (bad*e1 - ok*e2) / (T*T')),
# plus 0.00005 of the table's two decimals. MIN_REQUESTS keeps that under half the bound, so a
# call counted on the other side of a scrape by one side only (the app and its proxy count a call
# a millisecond apart) still fits: the demo and the walkthrough run the bot fast enough for it.
# Measured in the demo at 8 loops/s (2026-11-29): at 2 of 73 scrapes of web's proxy, a series'
# count and the app's at that instant differed by one call; never by more.
SUCCESS_TOLERANCE = 0.01
MIN_REQUESTS = 100

# Relative: issue 13's bound. The rate is constant, and the extrapolation of increase() scales the
# sampled part to the window, so what remains is the count's rounding in the table (one decimal:
# 0.05 of 1.0rps) and jitter; measured over gRPC (2026-11-29): 1 % in the walkthrough (2.0 vs
# 2.02 rps, 1.0 vs 1.01), 0.1 % in the demo (8.0 vs 8.01).
RPS_TOLERANCE = 0.05


def assert_seeds_findings(
    web_rows: list[Row], from_web: list[Row], to_voting: list[Row]
) -> tuple[Row, dict[str, Row]]:
    """The seed's story in the three tables: web fails some requests; from web, emoji is fine and
    voting is not; only web calls voting. Returns web's row and its callees' rows by name."""
    (web,) = web_rows
    assert web.name == "web" and web.success is not None and web.success < 1.0
    callees = {r.name: r for r in from_web}
    assert set(callees) == {"emoji", "voting"}
    assert callees["emoji"].success == 1.0
    voting = callees["voting"].success
    assert voting is not None and voting < 1.0
    assert [r.name for r in to_voting] == ["web"], "web is the only caller of voting"
    # Open connections per peer: web's proxy keeps a pooled connection to each callee at this rate.
    for row in (*callees.values(), *to_voting):
        assert row.cells["TCP_CONN"].isdigit() and int(row.cells["TCP_CONN"]) >= 1, row.cells
    return web, callees


def assert_matches_truth(checks: Iterable[tuple[str, Row, Truth]], prefix: str = "") -> None:
    """Each (what, the mesh's row, the services' own count at the proxy's scrapes) agrees within
    issue 13's bounds: SUCCESS within SUCCESS_TOLERANCE, RPS within RPS_TOLERANCE."""
    for what, row, true in checks:
        assert row.success is not None and row.rps is not None, (what, row.cells)
        points = 100 * (row.success - true.success)
        print(
            f"{prefix}{what}: mesh {row.success:.4f} {row.rps}rps, counted {true.success:.4f} "
            f"{true.rps:.2f}rps ({true.failures}/{true.requests} failed): {points:+.2f} points"
        )
        assert true.requests >= MIN_REQUESTS, f"{what}: {true.requests} calls, too few for a 1-point bound"
        assert row.success == pytest.approx(true.success, abs=SUCCESS_TOLERANCE), what
        assert row.rps == pytest.approx(true.rps, rel=RPS_TOLERANCE), what
