"""helm's --post-renderer for the lab: every Deployment's containers get PYTHONPATH=<argv[1]>.

The lab's node runs pods with the code its agent was started from (the checkout that ran
`lab up`, maybe another branch); this points the control plane at the code of the checkout that
runs helm (`lab.runtime.runtime_pythonpath()`), so the chart and the code it runs are of the
same commit. `python -m lab.post_render DIR` reads helm's rendering on stdin. The walkthrough
applies emojivoto's manifest through `with_pythonpath` for the same reason.
"""

from __future__ import annotations

import sys

import yaml


def with_env(text: str, name: str, value: str, deployment: str | None = None) -> str:
    """The YAML stream `text` with `name`=`value` on the containers of every Deployment (or of
    the one named `deployment`), replacing any value they had."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc.get("kind") == "Deployment" and deployment in (None, doc["metadata"]["name"]):
            for container in doc["spec"]["template"]["spec"].get("containers") or []:
                env = [e for e in container.get("env") or [] if e.get("name") != name]
                container["env"] = [*env, {"name": name, "value": value}]
    return yaml.safe_dump_all(docs, sort_keys=False)


def with_pythonpath(text: str, path: str) -> str:
    """The YAML stream `text` with PYTHONPATH=`path` on every Deployment's containers."""
    return with_env(text, "PYTHONPATH", path)


def main() -> None:
    sys.stdout.write(with_pythonpath(sys.stdin.read(), sys.argv[1]))


if __name__ == "__main__":
    main()
