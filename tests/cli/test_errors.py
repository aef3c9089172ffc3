"""kubectl_mesh.errors: one base for every user-facing error, caught once in cli.main."""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
from typing import Any

import pytest

import kubectl_mesh
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


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(kubectl_mesh.__path__, "kubectl_mesh."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    return found


def test_every_error_class_of_kubectl_mesh_is_a_mesh_error() -> None:
    classes = _exception_classes()
    assert "kubectl_mesh.kube.KubeError" in classes and "kubectl_mesh.prom.PrometheusError" in classes
    strays = sorted(n for n, c in classes.items() if not issubclass(c, MeshError))
    assert strays == []


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
