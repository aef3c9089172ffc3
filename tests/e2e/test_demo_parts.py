"""The demo's pure parts and its manifest: the bot's failure schedule, the wiring of the local
mesh, the Prometheus configuration (checked by the real promtool), and emojivoto.yml (checked
against the Kubernetes schema)."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_mesh.commands.stat import parse_request
from kubectl_mesh.contract import SCRAPE_JOB, SKIP_INBOUND_PORTS_ANNOTATION
from kubectl_mesh.demo import emojivoto
from kubectl_mesh.demo.plan import (
    DEPLOYMENTS,
    PORTS_NEEDED,
    WALKTHROUGH_STAT,
    build_plan,
    pod_name,
    prometheus_config,
)
from kubectl_mesh.stat import StatInputError, StatRequest
from kubectl_mesh.stat.model import ResourceRef

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "examples/emojivoto/emojivoto.yml"


@pytest.mark.parametrize("share", [0.0, 0.15, 0.5, 1 / 3, 1.0])
def test_failing_votes_are_an_exact_share_of_any_window(share: float) -> None:
    chooser = emojivoto.FailingShareChooser(share, ":doughnut:", emojivoto.random.Random(1))
    votes = [chooser.choose(list(emojivoto.EMOJI)) == ":doughnut:" for _ in range(600)]
    assert sum(votes) == math.floor(600 * share + 1e-9)
    for width in (7, 20, 80):  # every window of `width` consecutive votes: floor or ceil of the share
        counts = {sum(votes[i : i + width]) for i in range(len(votes) - width)}
        assert counts <= {math.floor(width * share), math.ceil(width * share)}


def test_voting_fails_only_for_the_failing_emoji_and_web_maps_unknown_to_400() -> None:
    vote = emojivoto.voting_routes(":doughnut:")[("POST", "/vote")]
    assert vote({"choice": [":doughnut:"]}).status == 500
    assert vote({"choice": [":pizza:"]}).status == 200
    assert vote({"choice": [":no-such:"]}).status == 400
    find = emojivoto.emoji_routes()[("GET", "/find")]
    assert find({"shortcode": [":doughnut:"]}).status == 200
    assert find({"shortcode": ["nope"]}).status == 404


def test_every_app_talks_through_its_own_proxy_to_the_next_proxy() -> None:
    plan = build_plan(list(range(30000, 30000 + PORTS_NEEDED)), "/tmp/w", python="py")
    pods = {p.deployment: p for p in plan.pods}
    assert list(pods) == list(DEPLOYMENTS)
    used = [port for p in plan.pods for port in vars(p.ports).values()] + [plan.prometheus_port]
    assert len(set(used)) == PORTS_NEEDED
    for p in plan.pods:
        assert p.app.env["http_proxy"] == f"http://127.0.0.1:{p.ports.outbound}"
        argv = list(p.proxy.argv)
        assert argv[:4] == ["py", "-m", "proxy", "run"]
        flags = dict(zip(argv[4::2], argv[5::2], strict=True))
        assert flags["--inbound-port"] == str(p.ports.inbound)
        assert flags["--admin-port"] == str(p.ports.admin)
        assert flags["--outbound-port"] == str(p.ports.outbound)
        assert (flags["--namespace"], flags["--workload-kind"]) == ("emojivoto", "deployment")
        assert (flags["--workload-name"], flags["--pod"]) == (p.deployment, p.pod)
        if p.deployment != "vote-bot":
            assert flags["--inbound-forward"] == f"127.0.0.1:{p.ports.app}"
    assert pods["web"].app.env["EMOJISVC_HOST"] == f"127.0.0.1:{pods['emoji'].ports.inbound}"
    assert pods["web"].app.env["VOTINGSVC_HOST"] == f"127.0.0.1:{pods['voting'].ports.inbound}"
    assert pods["vote-bot"].app.env["WEB_HOST"] == f"127.0.0.1:{pods['web'].ports.inbound}"


def test_pod_names_look_like_a_deployments() -> None:
    name = pod_name("vote-bot")
    head, rs_hash, suffix = name.rsplit("-", 2)
    assert head == "vote-bot" and len(rs_hash) == 9 and len(suffix) == 5


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (apt-get install prometheus)")
def test_prometheus_config_is_valid_and_labels_targets_like_the_cluster(tmp_path: Path) -> None:
    plan = build_plan(list(range(30000, 30000 + PORTS_NEEDED)), str(tmp_path), python="py")
    text = prometheus_config(plan)
    (tmp_path / "prometheus.yml").write_text(text)
    checked = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (job,) = json.loads(text)["scrape_configs"]
    assert job["job_name"] == SCRAPE_JOB
    # The labels the chart's relabelling gives a meshed Deployment's pod (scrape-config.yaml).
    relabel = yaml.safe_load((REPO / "charts/kubectl-mesh/files/scrape-config.yaml").read_text())
    targets = {r.get("target_label") for r in relabel["relabel_configs"]} - {None}
    labelmaps = [r["regex"] for r in relabel["relabel_configs"] if r.get("action") == "labelmap"]
    assert labelmaps == ["__meta_kubernetes_pod_label_kubectl_mesh_io_proxy_(.+)"]  # -> deployment
    for static, pod in zip(job["static_configs"], plan.pods, strict=True):
        assert static["targets"] == [f"127.0.0.1:{pod.ports.admin}"]
        assert set(static["labels"]) == targets | {"deployment"}
        assert static["labels"]["namespace"] == "emojivoto"
        assert static["labels"]["deployment"] == pod.deployment
        assert static["labels"]["pod"] == pod.pod
        if "replicaset" in targets:
            assert pod.pod.startswith(static["labels"]["replicaset"] + "-")


def test_walkthrough_commands_mean_the_seeds_questions_when_read_by_stats_own_parser() -> None:
    """One definition of the three commands; stat's parser turns each into the request the seed means."""
    web, from_web, to_voting = (parse_request(argv) for argv in WALKTHROUGH_STAT)
    assert web == StatRequest(kind="deployment", names=("web",), namespace="emojivoto")
    assert from_web == StatRequest(
        kind="deployment", all_namespaces=True, from_=ResourceRef("deployment", "web", "emojivoto")
    )
    assert to_voting == StatRequest(
        kind="deployment", all_namespaces=True, to=ResourceRef("deployment", "voting", "emojivoto")
    )
    # the demo appends its shorter window; the parser validates it like a user's
    assert parse_request((*WALKTHROUGH_STAT[0], "-t", "20s")).window == "20s"
    with pytest.raises(StatInputError):
        parse_request(("deploy", "--to", "voting", "--from", "web"))


def _manifest() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def test_manifest_is_valid_kubernetes() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in _manifest():
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_manifest_runs_each_service_by_explicit_command_outside_the_mesh_for_counters() -> None:
    deployments = {d["metadata"]["name"]: d for d in _manifest() if d["kind"] == "Deployment"}
    assert set(deployments) == set(emojivoto.SERVICES)
    for name, d in deployments.items():
        template = d["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert container["command"] == ["python3", "-m", "kubectl_mesh.demo.emojivoto", name]
        env = {e["name"]: e["value"] for e in container["env"]}
        counters_port = env["COUNTERS_PORT"]
        assert template["metadata"]["annotations"][SKIP_INBOUND_PORTS_ANNOTATION] == counters_port
        assert container["readinessProbe"]["httpGet"]["port"] == int(counters_port)
    services = {d["metadata"]["name"] for d in _manifest() if d["kind"] == "Service"}
    (web,) = deployments["web"]["spec"]["template"]["spec"]["containers"]
    web_env = {e["name"]: e["value"] for e in web["env"]}
    for upstream in (web_env["EMOJISVC_HOST"], web_env["VOTINGSVC_HOST"]):
        assert upstream.split(".")[0] in services


def test_the_image_holds_everything_the_services_import(tmp_path: Path) -> None:
    """The files the Dockerfile copies run the services with `python3 -I` (no site-packages)."""
    dockerfile = (REPO / "examples/emojivoto/Dockerfile").read_text()
    copies = [line.split()[1:] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert copies, "the Dockerfile copies nothing"
    for *sources, dest in copies:
        for source in sources:
            target = tmp_path / dest / Path(source).name if dest.endswith("/") else tmp_path / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / source, target)
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", "import sys; sys.path.insert(0, '.'); "
         "from kubectl_mesh.demo import emojivoto; print(len(emojivoto.EMOJI))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(emojivoto.EMOJI)


HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint not installed (dev extra)")
def test_the_dockerfile_passes_hadolint() -> None:
    dockerfile = str(REPO / "examples/emojivoto/Dockerfile")
    done = subprocess.run([HADOLINT, dockerfile], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_bad_request_takes_a_service_down() -> None:
    counters = emojivoto.Counters("emoji")
    server = emojivoto.serve("127.0.0.1", 0, emojivoto.emoji_routes(), counters)
    port = server.server_address[1]
    try:
        bad = [
            b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
            b"GET /list HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
            b"POST /list HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
            b"POST /list HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /find?shortcode=%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        ]
        for raw in bad:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                answer = s.recv(65536)
            # Refused with a 4xx (stdlib answers unparsable input HTTP/0.9-style: a bare error page).
            assert re.search(rb"\b4\d\d\b", answer.split(b"\r\n", 1)[0] + answer[-400:]), raw[:40]
            assert not answer.startswith(b"HTTP/1.1 2"), raw[:40]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /find?shortcode=:pizza: HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        server.shutdown()
        server.server_close()
