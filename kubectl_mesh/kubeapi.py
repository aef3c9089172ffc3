"""The `kubernetes` package behind `kube.KubeClient`'s interface, for commands where its import
time does not matter (`check`, `install`): kubeconfig loading, exec plugins and TLS are the
package's; requests, JSON and errors (`KubeError`) are the same as with `kube.py`'s client, so
`health` and `prom`'s service proxy work on either. The latency-critical commands (`stat`,
`inject`, completion, `version`) keep `kube.py`, which does not import the package (~0.25 s).
"""

from __future__ import annotations

from typing import Any

from kubectl_mesh.kube import DEFAULT_TIMEOUT_S, KubeClient, KubeConfig, KubeError, KubeOptions

KUBECONFIG_HINT = "fix the kubeconfig: kubectl config view"


class PackageClient(KubeClient):
    """`KubeClient` whose requests go through a `kubernetes.client.ApiClient`."""

    def __init__(self, api: Any, context: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(KubeConfig(server=str(api.configuration.host), context=context), timeout=timeout)
        self.api = api

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        accept: str = "application/json",
    ) -> tuple[int, bytes]:
        """One request; returns (status, body) whatever the status. Network failures raise KubeError."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            method_, url, headers_, body_, _ = self.api.param_serialize(
                method=method,
                resource_path=path,
                query_params=list((params or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            resp = self.api.call_api(
                method_, url, header_params=headers_, body=body_, _request_timeout=self.timeout
            )
            return int(resp.status), bytes(resp.read() or b"")
        except ApiException as exc:
            payload = exc.body if isinstance(exc.body, bytes) else str(exc.body or "").encode()
            return int(exc.status or 0), payload
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unreachable(getattr(exc, "reason", None) or exc) from None


def connect(options: KubeOptions, timeout: float = DEFAULT_TIMEOUT_S) -> PackageClient:
    """A client for the options' kubeconfig ($KUBECONFIG's files merged, as kubectl) and context."""
    from kubernetes import client, config

    from kubectl_mesh.kube import load_config

    # kube.py's resolution first: the same kubeconfig, and its one-line errors naming the file and
    # the field (tests/cli/test_kube.py holds the two loaders to the same answers).
    resolved = load_config(options.kubeconfig, options.context)
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=options.kubeconfig, context=resolved.context, client_configuration=configuration
        )
    except (config.ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KubeError(
            f"cannot load the kubeconfig {resolved.source}: {first}", hint=KUBECONFIG_HINT
        ) from None
    configuration.retries = False  # one try, as kubectl: a retry is the user's call
    return PackageClient(client.ApiClient(configuration), resolved.context, timeout=timeout)
