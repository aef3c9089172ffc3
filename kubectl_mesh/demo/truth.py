"""The apps' own counters at the instants Prometheus scraped a proxy: the truth a stat row is held to.

`increase(response_total[W])` at time `at` uses the proxy's samples inside the window, from its
first scrape there to its last, scaled to W. Counters read at other instants (the window's ends,
a sampler's ticks) cover other calls: a vote or two more or less, which at a few hundred votes is
most of a percentage point. Read at the scrape instants themselves (emojivoto's
`/counters?at=`), the apps count the very calls the proxy counted, and what is left between a
stat row and the truth is the rounding of the scaled counts (at most 0.5 / the row's requests).

Both the demo (its `--record`) and the lab walkthrough use this, each with its own Prometheus.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from kubectl_mesh.contract import SCRAPE_JOB
from kubectl_mesh.prom import PrometheusClient

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the apps, never via a proxy


def scrape_span(
    client: PrometheusClient, namespace: str, pod: str, window: str, at: float
) -> tuple[float, float]:
    """The first and last scrape of `pod`'s proxy in the `window` ending at `at` (Unix times)."""
    selector = f'up{{job="{SCRAPE_JOB}", namespace="{namespace}", pod="{pod}"}}[{window}]'
    instants = sorted({t for _, samples in client.samples(selector, at) for t, _ in samples})
    if len(instants) < 2:
        raise ValueError(f"{len(instants)} scrapes of {namespace}/{pod} in the {window} before {at:.3f}")
    return instants[0], instants[-1]


def read_counters(urls: dict[str, str], at: float | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Every app's `/counters` (now, or as they were at `at`): {"time", "services": {name: counters}}."""
    query = "" if at is None else f"?at={at:.3f}"
    services = {}
    for name, url in urls.items():
        with _DIRECT.open(url + query, timeout=timeout) as answer:
            services[name] = json.load(answer)
    times = [c["time"] for c in services.values()]
    return {"time": at if at is not None else min(times, default=0.0), "services": services}


def counters_at_scrapes(
    client: PrometheusClient, urls: dict[str, str], namespace: str, pod: str, window: str, at: float
) -> dict[str, Any]:
    """The apps' counters at the first and last scrape of `pod`'s proxy in the window ending at `at`:
    {"pod", "scrapes": [first, last], "start": …, "end": …} (start and end as read_counters)."""
    first, last = scrape_span(client, namespace, pod, window, at)
    return {
        "pod": pod,
        "scrapes": [first, last],
        "start": read_counters(urls, first),
        "end": read_counters(urls, last),
    }
