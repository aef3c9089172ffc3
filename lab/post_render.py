"""helm's --post-renderer for the lab: every Deployment's containers get PYTHONPATH=<argv[1]>.

The lab's node runs pods with the code its agent was started from (the checkout that ran
`lab up`, maybe another branch); this points the control plane at the code of the checkout that
runs helm (`lab.runtime.runtime_pythonpath()`), so the chart and the code it runs are of the
same commit. `python -m lab.post_render DIR` reads helm's rendering on stdin.
"""

from __future__ import annotations

import sys

import yaml


def main() -> None:
    path = sys.argv[1]
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    for doc in docs:
        if doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"].get("containers") or []:
                container.setdefault("env", []).append({"name": "PYTHONPATH", "value": path})
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))


if __name__ == "__main__":
    main()
