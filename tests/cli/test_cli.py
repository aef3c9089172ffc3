"""The plugin as users run it: through the real kubectl (plugin discovery), its help, its errors
(one line, exit 1, never a traceback), its start-up cost and kubectl's completion protocol."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kubectl_mesh import __version__

VENV_BIN = Path(sys.executable).parent
KUBECTL = "/usr/bin/kubectl"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: nothing listens


@pytest.fixture()
def dead_cluster(tmp_path: Path) -> Path:
    """A kubeconfig whose API server does not exist (a closed loopback port)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{closed_port()}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "dead", "context": {"cluster": "c", "user": "u", "namespace": "shop"}}],
                "current-context": "dead",
            }
        )
    )
    return kubeconfig


def run(
    *args: str, env: dict[str, str] | None = None, via_kubectl: bool = False
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PATH": f"{VENV_BIN}:/usr/bin:/bin", **(env or {})}
    full_env.pop("MESH_PROMETHEUS_URL", None)
    cmd = [KUBECTL, "mesh", *args] if via_kubectl else [str(VENV_BIN / "kubectl-mesh"), *args]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=60)


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    """`error: <message>`, and at most one `hint: <what to run>` line (kubectl_mesh.errors)."""
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines(keepends=True)
    assert lines and lines[0].startswith("error: ") and lines[0].endswith("\n"), done.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def test_kubectl_finds_the_plugin() -> None:
    done = run("version", "--client", via_kubectl=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Client version: v{__version__}\n"
    assert run("--version").stdout == f"kubectl-mesh {__version__}\n"


@pytest.mark.parametrize("command", ["stat", "check", "version", "completion"])
def test_every_command_has_help_with_examples(command: str) -> None:
    done = run(command, "--help")
    assert done.returncode == 0
    assert "Examples:" in done.stdout and f"kubectl mesh {command}" in done.stdout


def test_kubectl_style_flags_on_stat() -> None:
    help_text = run("stat", "--help").stdout
    for flag in ("--kubeconfig", "--context", "-n", "-A", "-o", "-l", "--from", "--to", "-t", "--unmeshed"):
        assert f"{flag} " in help_text or f"{flag}," in help_text, flag


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["stat", "deploy", "-t", "5s"], "longer than the 10s scrape interval"),
        (["stat", "deploy", "--to", "a", "--from", "b"], "--to and --from cannot be used together"),
        (["stat", "deploy", "-A", "-n", "x"], "cannot be used together"),
        (["stat", "svc"], 'unknown resource type "svc"'),
        (["stat", "deploy", "-o", "xml"], "invalid choice"),
        (["stat", "deploy", "-t", "-5m"], '"-5m" is not a duration'),
        (["stat", "deploy", "--time-window", "-5m"], '"-5m" is not a duration'),
    ],
)
def test_bad_arguments_are_one_line_errors(args: list[str], needle: str, dead_cluster: Path) -> None:
    assert_one_line_error(
        run(*args, "--kubeconfig", str(dead_cluster)) if args[0] == "stat" else run(*args), needle
    )


def test_unreachable_cluster_is_one_line_with_the_fix(dead_cluster: Path) -> None:
    done = run("stat", "deploy", "--kubeconfig", str(dead_cluster), via_kubectl=True)
    assert_one_line_error(done, "cannot reach the Kubernetes API server", "kubectl cluster-info")
    done = run("stat", "deploy", env={"KUBECONFIG": str(dead_cluster)})
    assert_one_line_error(done, "cannot reach the Kubernetes API server")


def test_missing_kubeconfig_and_context(tmp_path: Path, dead_cluster: Path) -> None:
    assert_one_line_error(
        run("stat", "deploy", "--kubeconfig", str(tmp_path / "none")), "no kubeconfig found"
    )
    assert_one_line_error(
        run("stat", "deploy", "--kubeconfig", str(dead_cluster), "--context", "other"),
        'context "other" is not in',
    )


def test_unreachable_prometheus_url_is_one_line(dead_cluster: Path) -> None:
    # With the API server down too, whichever is asked first is reported; both are one line.
    done = run(
        "stat",
        "deploy",
        "--kubeconfig",
        str(dead_cluster),
        "--prometheus-url",
        f"http://127.0.0.1:{closed_port()}",
    )
    assert_one_line_error(done, "cannot reach")
    if "Prometheus" in done.stderr:
        assert done.stderr.splitlines()[1].startswith("hint: check --prometheus-url"), done.stderr


def test_version_reports_an_unreachable_control_plane(dead_cluster: Path) -> None:
    done = run("version", "-o", "json", "--kubeconfig", str(dead_cluster))
    assert done.returncode == 0
    info = json.loads(done.stdout)
    assert info["client"] == f"v{__version__}" and info["server"].startswith("unavailable")


def test_check_fails_cleanly_without_a_cluster(dead_cluster: Path) -> None:
    done = run("check", "--kubeconfig", str(dead_cluster))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("✖ Kubernetes API reachable: cannot reach the Kubernetes API server")
    assert "hint:" in done.stdout or "kubectl cluster-info" in done.stdout
    report = json.loads(run("check", "--pre", "-o", "json", "--kubeconfig", str(dead_cluster)).stdout)
    assert report["success"] is False and report["checks"][0]["ok"] is False


def test_check_wait_shows_progress_and_gives_up(dead_cluster: Path) -> None:
    done = run("check", "--wait", "3s", "--kubeconfig", str(dead_cluster))
    assert done.returncode == 1
    assert "waiting for: Kubernetes API reachable" in done.stderr


def test_help_and_version_do_not_import_the_kubernetes_client() -> None:
    for args in (["--help"], ["version", "--client"], ["stat", "--help"]):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "kubectl_mesh", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
        heavy = {
            m for m in imported if m.split(".")[0] in ("kubernetes", "yaml", "tabulate", "ssl", "urllib3")
        }
        assert not heavy, (args, sorted(heavy))


def test_kubectl_completion_protocol() -> None:
    env = {**os.environ, "PATH": f"{VENV_BIN}:/usr/bin:/bin"}
    done = subprocess.run(
        [KUBECTL, "__complete", "mesh", "stat", "--from", ""],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stdout.splitlines()
    assert "deploy/" in lines and lines[-1] == ":4"
    done = subprocess.run(
        [str(VENV_BIN / "kubectl_complete-mesh"), ""], env=env, capture_output=True, text=True, timeout=60
    )
    assert {"stat", "check", "version", "completion"} <= set(done.stdout.splitlines())


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str) -> None:
    done = run("completion", shell)
    assert done.returncode == 0 and "kubectl-mesh __complete" in done.stdout
    if shell == "bash":
        assert subprocess.run(["bash", "-n"], input=done.stdout, text=True, timeout=10).returncode == 0


def test_completion_of_flag_values_and_contexts(dead_cluster: Path) -> None:
    def complete(*words: str) -> list[str]:
        done = subprocess.run(
            [str(VENV_BIN / "kubectl_complete-mesh"), *words],
            env={**os.environ, "KUBECONFIG": str(dead_cluster)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout.splitlines()

    assert complete("stat", "-o", "") == ["json", "table", "wide", "yaml", ":4"]
    assert complete("stat", "-t", "") == ["30s", "1m", "10m", "1h", ":4"]
    assert complete("stat", "deploy", "--context", "") == ["dead", ":4"]
    # names come from the cluster; an unreachable one gives no candidates, quickly, and no error
    assert complete("stat", "deploy", "") == [":4"]
    assert complete("stat", "--", "")[-1] == ":4"
    assert "--from" in complete("stat", "--")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["stta"], 'error: unknown command "stta" for "kubectl mesh"\n\nDid you mean this?\n\tstat\n\n'
         "Run 'kubectl mesh --help' for usage.\n"),
        (["help", "instal"], 'error: unknown command "instal" for "kubectl mesh"\n\nDid you mean this?\n'
         "\tinstall\n\nRun 'kubectl mesh --help' for usage.\n"),
        (["bogus"], 'error: unknown command "bogus" for "kubectl mesh"\n'
         "Run 'kubectl mesh --help' for usage.\n"),
        # no prefix abbreviation: --name is not --namespace (it is only suggested)
        (["stat", "deploy", "--name", "x"], "error: unknown flag: --name\n\nDid you mean this?\n"
         "\t--namespace\n\nRun 'kubectl mesh stat --help' for usage.\n"),
        (["stat", "deploy", "--nmespace=x"], "error: unknown flag: --nmespace\n\nDid you mean this?\n"
         "\t--namespace\n\nRun 'kubectl mesh stat --help' for usage.\n"),
        (["--context", "x", "stat", "deploy", "--all"], "error: unknown flag: --all\n\nDid you mean this?\n"
         "\t--all-namespaces\n\nRun 'kubectl mesh stat --help' for usage.\n"),
    ],
)  # fmt: skip
def test_typos_get_cobras_did_you_mean(args: list[str], expected: str, dead_cluster: Path) -> None:
    done = run(*args, env={"KUBECONFIG": str(dead_cluster)})
    assert (done.returncode, done.stdout, done.stderr) == (1, "", expected)


def test_no_arguments_and_help_print_help_on_stdout() -> None:
    for args in ([], ["help"]):
        done = run(*args)
        assert (done.returncode, done.stderr) == (0, ""), args
        assert done.stdout.startswith("usage: kubectl mesh") and "Examples:" in done.stdout
        assert "help" in done.stdout and "stat" in done.stdout
    done = run("help", "stat")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == run("stat", "--help").stdout


def test_kubeconfig_and_context_before_the_command(dead_cluster: Path, tmp_path: Path) -> None:
    """Both places work, and the command's own flag wins over the global one (as kubectl)."""
    done = run("--kubeconfig", str(dead_cluster), "stat", "deploy")
    assert_one_line_error(done, "cannot reach the Kubernetes API server", '(context "dead")')
    done = run(f"--kubeconfig={dead_cluster}", "--context", "other", "stat", "deploy")
    assert_one_line_error(done, 'context "other" is not in')
    done = run("--kubeconfig", str(tmp_path / "none"), "stat", "deploy", "--kubeconfig", str(dead_cluster))
    assert_one_line_error(done, "cannot reach the Kubernetes API server")
    done = run(
        "--context", "other", "stat", "deploy", via_kubectl=True, env={"KUBECONFIG": str(dead_cluster)}
    )
    assert_one_line_error(done, 'context "other" is not in')
    env = {**os.environ, "KUBECONFIG": str(dead_cluster)}
    complete = [str(VENV_BIN / "kubectl_complete-mesh")]
    done = subprocess.run([*complete, "--context", ""], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["dead", ":4"]
    done = subprocess.run([*complete, "--context", "dead", "st"], env=env, capture_output=True, text=True)
    assert "stat" in done.stdout.splitlines()


def test_zsh_completion_says_it_needs_compinit(tmp_path: Path) -> None:
    """The real zsh: without compinit the script says what to run (not `command not found:
    compdef`); with it, the completion function is registered."""
    if not Path("/usr/bin/zsh").exists():
        pytest.skip("zsh is not installed (scripts/install-system-deps.sh installs it)")
    script = tmp_path / "_kubectl_mesh"
    script.write_text(run("completion", "zsh").stdout)
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    bare = subprocess.run(["zsh", "-f", "-c", f"source {script}"], env=env, capture_output=True, text=True)
    assert bare.returncode == 1
    assert bare.stderr == (
        "kubectl-mesh: zsh completion needs compinit: run 'autoload -U compinit && compinit' first "
        "(e.g. in ~/.zshrc)\n"
    )
    loaded = f"autoload -U compinit && compinit -u && source {script} && print $_comps[kubectl-mesh]"
    with_compinit = subprocess.run(
        ["zsh", "-f", "-c", loaded],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (with_compinit.returncode, with_compinit.stderr) == (0, "")
    assert with_compinit.stdout == "_kubectl_mesh\n"
