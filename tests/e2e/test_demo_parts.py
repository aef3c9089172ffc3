"""The demo's pure parts and its manifest: the bot's failure schedule, the wiring of the local
mesh, the Prometheus configuration (checked by the real promtool), and emojivoto.yml (checked
against the Kubernetes schema)."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
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
from lab.runtime import runtime_env

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


@pytest.fixture
def grpc_services(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """emoji and voting as real grpcio servers, and web's HTTP server calling them over gRPC."""
    for var in ("grpc_proxy", "http_proxy", "https_proxy", "GRPC_PROXY", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)  # straight to the servers, whoever runs the tests
    ev = emojivoto
    counters = {name: ev.Counters(name) for name in ("emoji", "voting", "web")}
    emoji_handler = ev.grpc_handler(ev.EMOJI_SERVICE, ev.Emoji_pb2, ev.emoji_service(), counters["emoji"])
    voting_impl = ev.voting_service(":doughnut:")
    voting_handler = ev.grpc_handler(ev.VOTING_SERVICE, ev.Voting_pb2, voting_impl, counters["voting"])
    emoji, emoji_port = ev.serve_grpc("127.0.0.1", 0, emoji_handler)
    voting, voting_port = ev.serve_grpc("127.0.0.1", 0, voting_handler)
    to_emoji = ev.GrpcUpstream("emoji", f"127.0.0.1:{emoji_port}", ev.EMOJI_SERVICE, ev.Emoji_pb2,
                               counters["web"], 5.0)  # fmt: skip
    to_voting = ev.GrpcUpstream("voting", f"127.0.0.1:{voting_port}", ev.VOTING_SERVICE, ev.Voting_pb2,
                                counters["web"], 5.0)  # fmt: skip
    web = ev.serve("127.0.0.1", 0, ev.web_routes(to_emoji, to_voting), counters["web"])
    try:
        yield {"counters": counters, "web_port": web.server_address[1], "voting_port": voting_port}
    finally:
        web.shutdown()
        web.server_close()
        to_emoji.close()
        to_voting.close()
        for server in (emoji, voting):
            server.stop(grace=0).wait(5)


def _get(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_voting_fails_the_doughnut_with_unknown_and_web_answers_500(grpc_services: dict[str, Any]) -> None:
    """Through real gRPC: each answer of web, and what each service counted, by gRPC status."""
    port = grpc_services["web_port"]
    assert _get(port, "/api/vote?choice=:doughnut:") == (500, {"error": "voting service answered UNKNOWN"})
    status, body = _get(port, "/api/vote?choice=:pizza:")
    assert (status, body) == (200, {"shortcode": ":pizza:", "unicode": emojivoto.EMOJI[":pizza:"]})
    assert _get(port, "/api/vote?choice=:no-such:")[0] == 400  # emoji finds nothing; voting is not called
    status, listing = _get(port, "/api/list")
    assert status == 200 and [e["shortcode"] for e in listing] == list(emojivoto.EMOJI)
    status, board = _get(port, "/api/leaderboard")
    assert status == 200 and board == [
        {"shortcode": ":pizza:", "votes": 1, "unicode": emojivoto.EMOJI[":pizza:"]}
    ]

    counters = {name: c.snapshot() for name, c in grpc_services["counters"].items()}
    vote = "/emojivoto.v1.VotingService/Vote"
    assert counters["voting"]["received"]["paths"] == {
        f"{vote}Doughnut": {"total": 1, "failures": 1, "statuses": {"UNKNOWN": 1}},
        f"{vote}Pizza": {"total": 1, "failures": 0, "statuses": {"OK": 1}},
        "/emojivoto.v1.VotingService/Results": {"total": 1, "failures": 0, "statuses": {"OK": 1}},
    }
    find, list_all = "/emojivoto.v1.EmojiService/FindByShortcode", "/emojivoto.v1.EmojiService/ListAll"
    assert counters["emoji"]["received"]["paths"] == {
        find: {"total": 3, "failures": 0, "statuses": {"OK": 3}},
        list_all: {"total": 2, "failures": 0, "statuses": {"OK": 2}},
    }
    # web's own view of its calls is the callees' view, and its answers are counted by HTTP status.
    assert counters["web"]["sent"]["voting"]["paths"] == counters["voting"]["received"]["paths"]
    assert counters["web"]["sent"]["emoji"]["paths"] == counters["emoji"]["received"]["paths"]
    assert counters["web"]["received"]["paths"]["/api/vote"] == {
        "total": 3, "failures": 1, "statuses": {"200": 1, "400": 1, "500": 1}
    }  # fmt: skip


def test_counters_answer_as_they_were_at_an_instant(grpc_services: dict[str, Any]) -> None:
    """`/counters?at=T` (how the e2e tests read the truth at the proxies' scrape instants) gives
    what `/counters` answered at T, through real calls; a bad or too old T is one JSON line."""
    web = grpc_services["counters"]["web"]
    server = emojivoto.serve("127.0.0.1", 0, emojivoto.counters_routes(web), None)
    counters_port = server.server_address[1]
    try:
        then = []
        for choice in (":pizza:", ":doughnut:", ":joy:", ":doughnut:"):
            then.append(_get(counters_port, "/counters")[1])
            _get(grpc_services["web_port"], f"/api/vote?choice={choice}")
        now = _get(counters_port, "/counters")[1]
        assert now["received"]["total"] == 4 and now["sent"]["voting"]["failures"] == 2
        for before in then:  # the answer then, everything but the instant it was read
            status, at = _get(counters_port, f"/counters?at={before['time']}")
            assert status == 200 and {**at, "time": 0} == {**before, "time": 0}, before["time"]
        assert then[0]["received"] == {"total": 0, "failures": 0, "paths": {}} and then[0]["sent"] == {}
        status, later = _get(counters_port, f"/counters?at={now['time'] + 60}")  # the future: now
        assert status == 200 and later["received"] == now["received"] and later["sent"] == now["sent"]
        for bad in ("soon", "nan", "inf", "1e999"):
            status, answer = _get(counters_port, f"/counters?at={bad}")
            assert status == 400 and list(answer) == ["error"] and "\n" not in answer["error"], answer
    finally:
        server.shutdown()
        server.server_close()


def test_counters_forget_beyond_their_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded: at most HISTORY_EVENTS calls are kept; an instant before them is refused, not
    answered with counters that would be wrong."""
    monkeypatch.setattr(emojivoto, "HISTORY_EVENTS", 3)
    counters = emojivoto.Counters("voting")
    marks = []
    for status in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK, grpc.StatusCode.OK):
        marks.append(counters.snapshot()["time"])
        counters.count_received("/v", status)
    two = {"total": 2, "failures": 1, "statuses": {"OK": 1, "UNKNOWN": 1}}
    at_2, at_1 = counters.snapshot_at(marks[2]), counters.snapshot_at(marks[1])
    assert at_2 is not None and at_2["received"] == {"total": 2, "failures": 1, "paths": {"/v": two}}
    assert at_1 is not None and at_1["received"]["total"] == 1  # the oldest instant still known
    assert counters.snapshot_at(marks[0]) is None  # the first call is forgotten: its instant cannot be told


def test_a_failing_emoji_outside_the_list_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kubectl_mesh.demo.emojivoto", "voting"],
        env={**runtime_env(), "FAILING_EMOJI": ":no-such:", "PORT": "0", "COUNTERS_PORT": "0"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == "emojivoto voting: FAILING_EMOJI=':no-such:' is not one of the emoji"


@pytest.mark.parametrize("service", ["emoji", "voting"])
def test_a_taken_port_is_a_one_line_error(service: str) -> None:
    """grpcio would share a port by SO_REUSEPORT; the services refuse a taken one instead."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even one that would share
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "kubectl_mesh.demo.emojivoto", service],
            env={**runtime_env(), "BIND": "127.0.0.1", "PORT": str(port), "COUNTERS_PORT": "0"},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"emojivoto {service}: cannot listen: 127.0.0.1:{port}"), line


def test_bad_grpc_input_costs_one_call_not_the_service(grpc_services: dict[str, Any]) -> None:
    """Garbage instead of HTTP/2, and a call whose message is not protobuf: refused, counted by
    nobody as a vote, and the next good call still works."""
    port = grpc_services["voting_port"]
    for raw in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            with contextlib.suppress(OSError):
                while s.recv(65536):
                    pass
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        raw_vote = channel.unary_unary("/emojivoto.v1.VotingService/VotePizza")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as refused:
            raw_vote(b"\xff\xff\xff", timeout=5)
        assert refused.value.code() == grpc.StatusCode.INTERNAL  # grpcio: the request did not parse
        assert raw_vote(b"", timeout=5) == b""  # an empty VoteRequest: a vote
    voting = grpc_services["counters"]["voting"].snapshot()["received"]
    assert voting["paths"] == {"/emojivoto.v1.VotingService/VotePizza": {"total": 1, "failures": 0,
                                                                         "statuses": {"OK": 1}}}  # fmt: skip


def test_the_protos_name_a_vote_method_per_emoji_as_the_original_does() -> None:
    methods = [m.name for m in emojivoto.VOTING_SERVICE.methods]
    assert methods == [emojivoto.vote_method(code) for code in emojivoto.EMOJI] + ["Results"]
    assert emojivoto.vote_method(":jack_o_lantern:") == "VoteJackOLantern"  # the original's spelling
    assert emojivoto.vote_method(":100:") == "Vote100"
    assert [m.name for m in emojivoto.EMOJI_SERVICE.methods] == ["ListAll", "FindByShortcode"]
    assert emojivoto.VOTING_SERVICE.full_name == "emojivoto.v1.VotingService"


def _descriptor_bytes(module_text: str) -> bytes:
    import ast

    match = re.search(r"AddSerializedFile\((b'.*?')\)\n", module_text)
    assert match, "no serialized descriptor in the generated module"
    value = ast.literal_eval(match.group(1))
    assert isinstance(value, bytes)
    return value


def test_the_checked_in_modules_are_generated_from_the_protos(tmp_path: Path) -> None:
    """protoc on examples/emojivoto/proto gives the descriptors the checked-in modules carry
    (compared as descriptors: another protoc version may write the module's other lines differently)."""
    pytest.importorskip("grpc_tools", reason="needs grpcio-tools (the dev extra)")
    generate = [sys.executable, str(REPO / "scripts/gen_emojivoto_proto.py"), "--out", str(tmp_path)]
    done = subprocess.run(generate, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    checked_in = REPO / "kubectl_mesh/demo/emojivoto_proto"
    for name in ("Emoji_pb2.py", "Voting_pb2.py"):
        fresh = _descriptor_bytes((tmp_path / name).read_text())
        assert fresh == _descriptor_bytes((checked_in / name).read_text()), (
            f"{name}: run scripts/gen_emojivoto_proto.py"
        )


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
    # web's gRPC calls go through its own proxy too: grpcio opens a CONNECT tunnel to it.
    assert pods["web"].app.env["grpc_proxy"] == f"http://127.0.0.1:{pods['web'].ports.outbound}"
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
    # The lab has no DNS server: grpcio must resolve with getaddrinfo (/etc/hosts), not c-ares.
    assert web_env["GRPC_DNS_RESOLVER"] == "native"
    ports = {d["metadata"]["name"]: d["spec"]["ports"] for d in _manifest() if d["kind"] == "Service"}
    for grpc_service in ("emoji-svc", "voting-svc"):
        (port,) = ports[grpc_service]
        assert (port["name"], port["appProtocol"]) == ("grpc", "kubernetes.io/h2c")


def test_the_image_holds_everything_the_services_import(tmp_path: Path) -> None:
    """The files the Dockerfile copies, plus the packages it pip-installs, run the services: they
    are imported from the copies (python -I: no PYTHONPATH, no user site), and the pinned
    versions are within the package's `demo` extra."""
    from packaging.requirements import Requirement

    dockerfile = (REPO / "examples/emojivoto/Dockerfile").read_text()
    copies = [line.split()[1:] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert copies, "the Dockerfile copies nothing"
    for *sources, dest in copies:
        for source in sources:
            target = tmp_path / dest / Path(source).name if dest.endswith("/") else tmp_path / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / source, target)
    (pip,) = [line for line in dockerfile.splitlines() if line.startswith("RUN pip install")]
    pinned = dict(arg.split("==") for arg in pip.split()[3:] if "==" in arg)
    assert set(pinned) == {"grpcio", "protobuf"}, pip
    import tomllib

    wanted = {Requirement(r).name: Requirement(r) for r in tomllib.loads(
        (REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["demo"]}  # fmt: skip
    for name, version in pinned.items():
        assert version in wanted[name].specifier, (name, version, str(wanted[name]))
    done = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, '.'); "
         "from kubectl_mesh.demo import emojivoto; print(emojivoto.__file__); print(len(emojivoto.EMOJI))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    where, count = done.stdout.split()
    assert Path(where).is_relative_to(tmp_path) and int(count) == len(emojivoto.EMOJI)


HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint not installed (dev extra)")
def test_the_dockerfile_passes_hadolint() -> None:
    dockerfile = str(REPO / "examples/emojivoto/Dockerfile")
    done = subprocess.run([HADOLINT, dockerfile], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_bad_request_takes_web_down(grpc_services: dict[str, Any]) -> None:
    port = grpc_services["web_port"]
    bad = [
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
        b"GET /api/list HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"POST /api/list HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
        b"POST /api/list HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /api/vote?choice=%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
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
        s.sendall(b"GET /api/vote?choice=:pizza: HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    # No bad request became a vote: voting counted the one good one.
    voting = grpc_services["counters"]["voting"].snapshot()["received"]
    assert (voting["total"], voting["failures"]) == (1, 0)
