"""The real webhook app with one fault: the injector raises on pods labelled
`mesh-test/injector-error=true`. The API server accepts such a pod, so the lab can show the
fail-open path end to end (answer, Event on the owner, metrics) with the rest all real.
"""

from __future__ import annotations

from typing import Any

from webhook import admission
from webhook.wsgi import app

FAULT_LABEL = "mesh-test/injector-error"
_inject_pod = admission.inject_pod


def _faulty_inject_pod(pod: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    if ((pod.get("metadata") or {}).get("labels") or {}).get(FAULT_LABEL) == "true":
        raise RuntimeError("a fault the test injected")
    return _inject_pod(pod, *args, **kwargs)


admission.inject_pod = _faulty_inject_pod  # type: ignore[assignment]

__all__ = ["FAULT_LABEL", "app"]
