"""kubectl_mesh.errors: one base for every user-facing error, caught once in cli.main."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import kubectl_mesh
import proxy
import webhook
from kubectl_mesh import cli
from kubectl_mesh.errors import MeshError


def test_message_and_hint() -> None:
    error = MeshError("the thing is broken", "run the fixer")
    assert (str(error), error.message, error.hint) == (
        "the thing is broken",
        "the thing is broken",
        "run the fixer",
    )
    assert MeshError("only a message").hint == ""


# Modules that run on import (gunicorn's config, the WSGI app, the entry points): read, not imported.
ENTRY_MODULES = ("webhook.gunicorn_conf", "webhook.wsgi", "kubectl_mesh.__main__", "proxy.__main__")

# The proxy's and the webhook's errors that no person reads: each becomes an answer to a peer.
PROTOCOL_ERRORS = {
    "proxy.connections.UpstreamError": "the upstream failed: a 502 (or a reset) to the client",
    "proxy.http1.ProtocolError": "a peer's malformed HTTP: a 400, or the connection closed",
    "proxy.h2proxy._CompressionError": "a header block that does not decode: GOAWAY(COMPRESSION_ERROR)",
    "proxy.h2proxy._WindowUpdateFlood": "a WINDOW_UPDATE flood: GOAWAY(ENHANCE_YOUR_CALM)",
    "proxy.hpack_nghttp2.HPACKEncodingError": "nghttp2 refusing a list: never expected, lists are bounded",
    "proxy.tap.TapFilterError": "a bad /tap query: a 400 to the tap client (the CLI checks its flags)",
    "webhook.admission.BadRequest": "a malformed AdmissionReview: a 400 to the API server",
    "webhook.worker.HeadTooLarge": "an oversized request head: a 431 to the client",
    "webhook.worker.Expired": "a connection past its deadline (a GreenletExit): closed",
}


def _exception_classes(package: ModuleType) -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if info.name in ENTRY_MODULES:
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    return found


def test_every_error_class_of_kubectl_mesh_is_a_mesh_error() -> None:
    classes = _exception_classes(kubectl_mesh)
    assert "kubectl_mesh.kube.KubeError" in classes and "kubectl_mesh.prom.PrometheusError" in classes
    strays = sorted(n for n, c in classes.items() if not issubclass(c, MeshError))
    assert strays == []


def test_the_proxy_and_webhook_raise_mesh_errors_but_for_answers_to_peers() -> None:
    """mesh-proxy's flags and init, the webhook's config: MeshErrors, printed in one line; the
    rest is a protocol error, each named here with the answer it becomes."""
    classes = {**_exception_classes(proxy), **_exception_classes(webhook)}
    assert "proxy.config.ProxyConfigError" in classes and "proxy.init.InitError" in classes
    for name in ("proxy.config.ProxyConfigError", "proxy.init.InitError"):
        assert issubclass(classes[name], MeshError), name
    assert sorted(n for n, c in classes.items() if not issubclass(c, MeshError)) == sorted(PROTOCOL_ERRORS)


def test_every_error_class_has_a_name_of_its_own() -> None:
    """A traceback, a log line or an `except` names a class by its name alone: no two alike."""
    classes = {**_exception_classes(kubectl_mesh), **_exception_classes(proxy), **_exception_classes(webhook)}
    by_name: dict[str, list[str]] = {}
    for qualified in classes:
        by_name.setdefault(qualified.rsplit(".", 1)[1], []).append(qualified)
    assert {n: q for n, q in by_name.items() if len(q) > 1} == {}
    assert {"MeshConfigError", "ProxyConfigError", "WebhookConfigError", "LogFormatError"} <= set(by_name)


@pytest.mark.parametrize(
    ("reader", "env"),
    [
        ("webhook.worker.limits_from_env", {"MESH_WEBHOOK_HEADER_TIMEOUT": "0"}),
        ("webhook.worker.limits_from_env", {"MESH_WEBHOOK_BODY_BUDGET": "1024"}),
        ("webhook.worker.metrics_bind_from_env", {"MESH_WEBHOOK_METRICS_BIND": "0.0.0.0:http"}),
        ("webhook.worker.workers_from_env", {"MESH_WEBHOOK_WORKERS": "0"}),
        ("kubectl_mesh.log.format_from_env", {"MESH_LOG_FORMAT": "xml"}),
    ],
)
def test_the_webhooks_environment_errors_are_mesh_errors(reader: str, env: dict[str, str]) -> None:
    """gunicorn_conf catches MeshError (one line); each reader's bad value is one, naming its variable."""
    module, name = reader.rsplit(".", 1)
    with pytest.raises(MeshError) as info:
        getattr(importlib.import_module(module), name)(env)
    assert next(iter(env)) in str(info.value) and "\n" not in str(info.value)


def test_the_entry_modules_define_no_error_class() -> None:
    """They are not imported above (they run): read them, so that no error class hides there."""
    for name in ENTRY_MODULES:
        tree = ast.parse(Path(importlib.util.find_spec(name).origin or "").read_text())
        bases = [
            ast.unparse(b) for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for b in node.bases
        ]
        assert not [b for b in bases if re.search(r"Error|Exception|Exit", b)], (name, bases)


def _main_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> int:
    def func(args: Any) -> int:
        raise exc

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=func)
    monkeypatch.setattr(cli, "build_parser", lambda only=None: parser)
    return cli.main([])


def test_main_prints_the_message_and_the_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main_raising(monkeypatch, MeshError("no cluster", "kubectl cluster-info")) == 1
    assert capsys.readouterr().err == "error: no cluster\nhint: kubectl cluster-info\n"
    from kubectl_mesh.kube import KubeError

    assert _main_raising(monkeypatch, KubeError("cannot reach it", status=503)) == 1
    assert capsys.readouterr().err == "error: cannot reach it\n"


def test_anything_else_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MESH_DEBUG", raising=False)
    assert _main_raising(monkeypatch, ZeroDivisionError("oops")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ZeroDivisionError: oops") and err.count("\n") == 1
