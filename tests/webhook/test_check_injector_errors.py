"""`kubectl mesh check` reports injector errors of the last hour (issue #12), end to end without a
cluster: the real webhook (gunicorn, TLS on its admission port), a real Prometheus running the
chart's own `mesh-webhook` scrape job (plain HTTP to the webhook's metrics port; a static target in
place of pod discovery), and the check reading that Prometheus.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_mesh import contract as c
from kubectl_mesh import health
from kubectl_mesh.procs import start_prometheus
from kubectl_mesh.prom import PrometheusClient
from tests.chart.helpers import chart_objects
from tests.support.webhook_server import WebhookServer
from tests.webhook.test_admission import POD, admission_review

pytestmark = pytest.mark.slow


def charts_webhook_job() -> dict[str, Any]:
    """The chart's `mesh-webhook` scrape job, as real helm renders it."""
    (config_map,) = [
        d
        for d in chart_objects()
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "prometheus-config"
    ]
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == c.WEBHOOK_SCRAPE_JOB]
    return dict(job)


def test_check_sees_an_injector_error_through_the_charts_scrape_job(tmp_path: Path) -> None:
    if not shutil.which("prometheus"):
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    job = charts_webhook_job()
    with WebhookServer(tmp_path / "webhook", workers=1) as server:
        job = {**job, "scrape_interval": "1s", "scrape_timeout": "1s"}
        del job["kubernetes_sd_configs"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{server.metrics_port}"]}]
        job["relabel_configs"] = []  # they select pods by their labels: there are none here
        prometheus = start_prometheus({"scrape_configs": [job]}, tmp_path / "prometheus")
        try:
            ctx = health.Context(prometheus_url=prometheus.url)
            client = PrometheusClient(url=prometheus.url)

            def scraped_twice() -> bool:
                got = client.query(f'count_over_time(up{{job="{c.WEBHOOK_SCRAPE_JOB}"}}[1m])')
                return (
                    bool(got)
                    and got[0][1] >= 2
                    and client.query(f'up{{job="{c.WEBHOOK_SCRAPE_JOB}"}}')[0][1] == 1
                )

            prometheus.proc.wait_ready(scraped_twice, 30)
            assert health.check_injector_errors(ctx) == "none in the last hour (1 webhook pods scraped)"

            pod = copy.deepcopy(POD)
            pod["spec"]["initContainers"] = {"not": "a list"}  # the injector raises: fail-open
            status, answer = server.mutate(admission_review(pod, uid="uid-error"))
            assert status == 200 and answer["response"]["allowed"] is True

            def failing() -> bool:
                result = health.run_one(ctx, "errors", health.check_injector_errors)
                return not result.ok

            prometheus.proc.wait_ready(failing, 30)
            result = health.run_one(ctx, "errors", health.check_injector_errors)
            assert "the injector failed on 1 pod in the last hour" in result.detail, result
            assert f"reason={c.EVENT_INJECTION_SKIPPED}" in result.hint
        finally:
            prometheus.stop()


def test_check_says_when_the_webhook_is_not_scraped(tmp_path: Path) -> None:
    if not shutil.which("prometheus"):
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    prometheus = start_prometheus({"scrape_configs": []}, tmp_path / "prometheus")
    try:
        result = health.run_one(
            health.Context(prometheus_url=prometheus.url), "errors", health.check_injector_errors
        )
        assert not result.ok and "does not scrape the webhook's metrics" in result.detail
    finally:
        prometheus.stop()
