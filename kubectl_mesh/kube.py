"""Talking to the Kubernetes API: kubeconfig (--kubeconfig, $KUBECONFIG, --context) and requests.

`KubeClient` is a small JSON-over-HTTPS client on the standard library (`http.client`, `ssl`). The
commands users run all the time (`stat`, `check`, `version`, completion) use it, because importing
the `kubernetes` package alone costs about 0.25 s — most of the CLI's budget.

Authentication: client certificates (file or data), bearer tokens (token, tokenFile), basic auth
and `exec` credential plugins (client.authentication.k8s.io ExecCredential: token or client
certificate); as client-go, a plugin runs only when the user has no token, password or client
certificate of its own. A cluster's `tls-server-name` is verified instead of the host, and its
`proxy-url` (an http:// proxy) is used: a CONNECT tunnel to an https server, absolute-form
requests to an http one. tests/cli/test_kube.py checks the resolution against the `kubernetes`
package's own loader (and kubectl where that loader differs from kubectl). Errors are
`KubeError` with a one-line message that says how to fix it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from kubectl_mesh.errors import MeshError

if TYPE_CHECKING:
    import http.client
    import ssl

DEFAULT_KUBECONFIG = "~/.kube/config"
DEFAULT_TIMEOUT_S = 10.0


class KubeError(MeshError):
    """A failure talking to the cluster, as one line for the user; `status` is the HTTP status."""

    def __init__(self, message: str, status: int | None = None, reason: str = "", hint: str = "") -> None:
        super().__init__(message, hint)
        self.status = status
        self.reason = reason


@dataclass
class KubeConfig:
    """What one context of a kubeconfig resolves to."""

    server: str
    context: str
    namespace: str = "default"
    namespace_from_context: bool = False
    ca_data: bytes | None = None  # PEM
    insecure: bool = False
    tls_server_name: str | None = None
    client_cert_data: bytes | None = None  # PEM
    client_key_data: bytes | None = None
    token: str | None = None
    username: str | None = None
    password: str | None = None
    exec_spec: dict[str, Any] | None = None
    exec_dir: str = ""  # the plugin runs here: the directory of the kubeconfig naming the user
    proxy_url: str | None = None
    source: str = ""  # the kubeconfig file(s), for messages
    ca_origin: str = ""  # where the CA came from, for messages: `kubeconfig F: cluster "c": field`
    user_origin: str = ""  # `kubeconfig F: user "u"`


@dataclass(frozen=True)
class Credentials:
    """What a request authenticates with, once an exec plugin (if any) has run."""

    token: str | None = None
    basic: tuple[str, str] | None = None  # (username, password)
    client_cert_data: bytes | None = None  # PEM
    client_key_data: bytes | None = None


@dataclass(frozen=True)
class KubeOptions:
    """Which cluster and namespace, as kubectl's flags name them (None: the flag was not given).

    The commands build it from their flags (kubectl_mesh.flags.kube_options); nothing below the
    commands sees argparse."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    request_timeout: float | None = None  # seconds, per request (--request-timeout)


def _kubeconfig_paths(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit).expanduser()]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path(DEFAULT_KUBECONFIG).expanduser()]


def _is_file(path: Path) -> bool:
    """Whether a kubeconfig is there; one line naming it when it cannot even be looked at."""
    try:
        return path.is_file()
    except OSError as exc:
        raise KubeError(f"cannot read kubeconfig {path}: {exc.strerror}") from None


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        text = path.read_text()
    except OSError as exc:
        raise KubeError(f"cannot read kubeconfig {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=loader)  # a safe loader (C if available)
    except yaml.YAMLError as exc:
        raise KubeError(f"kubeconfig {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return data if isinstance(data, dict) else {}


def _read(base: Path, entry: dict[str, Any], file_key: str, data_key: str, where: str) -> bytes | None:
    """A `…-data` field (base64) or the file a `…` field names (relative to the kubeconfig);
    KubeError names the kubeconfig, the entry and the field (`where` is the first two)."""
    import binascii

    if entry.get(data_key):
        value = entry[data_key]
        try:
            text = "".join(value.split()) if isinstance(value, str) else "!"  # line breaks: as Go
            return base64.b64decode(text, validate=True)
        except binascii.Error:
            raise KubeError(f"{where}: {data_key} is not valid base64") from None
    if entry.get(file_key):
        path = Path(str(entry[file_key])).expanduser()
        if not path.is_absolute():
            path = base / path
        try:
            return path.read_bytes()
        except OSError as exc:
            raise KubeError(f"{where}: cannot read {file_key} {path}: {exc.strerror}") from None
    return None


SECTIONS = (("clusters", "cluster"), ("users", "user"), ("contexts", "context"))


def _named_items(path: Path, doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(section, name, body) of a kubeconfig's clusters, users and contexts; a malformed entry is
    a KubeError naming the file and the entry, as kubectl and client-go refuse it."""
    for section, key in SECTIONS:
        items = doc.get(section) or []
        if not isinstance(items, list):
            raise KubeError(f"kubeconfig {path}: {section} is not a list")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise KubeError(f"kubeconfig {path}: {section}[{i}] is not a mapping")
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise KubeError(f"kubeconfig {path}: {section}[{i}] has no name")
            body = item.get(key) or {}
            if not isinstance(body, dict):
                raise KubeError(f'kubeconfig {path}: {section}[{i}] ("{name}"): {key} is not a mapping')
            yield section, name, body


def load_config(kubeconfig: str | None = None, context: str | None = None) -> KubeConfig:
    """Resolve the context like kubectl: files merged first-wins, --context over current-context."""
    paths = _kubeconfig_paths(kubeconfig)
    existing = [p for p in paths if _is_file(p)]
    source = os.pathsep.join(str(p) for p in paths)
    if not existing:
        raise KubeError(
            f"no kubeconfig found at {source}: point --kubeconfig or $KUBECONFIG at one "
            "(`kubectl config view` shows what kubectl uses)"
        )
    named: dict[str, dict[str, tuple[Path, dict[str, Any]]]] = {"clusters": {}, "users": {}, "contexts": {}}
    current = None
    for path in existing:
        doc = _load_yaml(path)
        current = current or doc.get("current-context")
        for section, name, body in _named_items(path, doc):
            named[section].setdefault(name, (path, body))
    context_name = context or current
    if not context_name:
        raise KubeError(f"kubeconfig {source} has no current context: pass --context")
    if context_name not in named["contexts"]:
        raise KubeError(
            f'context "{context_name}" is not in {source} (`kubectl config get-contexts` lists them)'
        )
    _, ctx = named["contexts"][context_name]
    cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
    if cluster_name not in named["clusters"]:
        raise KubeError(f'context "{context_name}" names cluster "{cluster_name}", which is not in {source}')
    cluster_path, cluster = named["clusters"][str(cluster_name)]
    user_path, user = named["users"].get(str(user_name), (cluster_path, {}))
    cluster_where = f'kubeconfig {cluster_path}: cluster "{cluster_name}"'
    user_where = f'kubeconfig {user_path}: user "{user_name}"'
    cluster_base, user_base = cluster_path.parent, user_path.parent
    server = str(cluster.get("server") or "")
    if not server:
        raise KubeError(f"{cluster_where} has no server")
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token_bytes = _read(user_base, user, "tokenFile", "", user_where)
        token = token_bytes.decode().strip() if token_bytes else None  # as client-go: trimmed
    ca_field = (
        "certificate-authority-data" if cluster.get("certificate-authority-data") else "certificate-authority"
    )
    return KubeConfig(
        server=server.rstrip("/"),
        context=context_name,
        namespace=ctx.get("namespace") or "default",
        namespace_from_context=bool(ctx.get("namespace")),
        ca_data=_read(
            cluster_base, cluster, "certificate-authority", "certificate-authority-data", cluster_where
        ),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name"),
        client_cert_data=_read(user_base, user, "client-certificate", "client-certificate-data", user_where),
        client_key_data=_read(user_base, user, "client-key", "client-key-data", user_where),
        token=token,
        username=user.get("username"),
        password=user.get("password"),
        exec_spec=user.get("exec"),
        exec_dir=str(user_base),
        proxy_url=cluster.get("proxy-url") or None,
        source=source,
        ca_origin=f"{cluster_where}: {ca_field}",
        user_origin=user_where,
    )


def credentials(config: KubeConfig) -> Credentials:
    """The user's credentials, running the exec plugin only when it has none of its own
    (client-go: a token, a password or a client certificate in the kubeconfig wins)."""
    cert, key = config.client_cert_data, config.client_key_data
    basic = (config.username, config.password or "") if config.username is not None else None
    token = config.token
    if config.exec_spec and not (token or basic or (cert and key)):
        status = _run_exec_plugin(config.exec_spec, config)
        token = status.get("token") or None
        if status.get("clientCertificateData"):
            cert = str(status["clientCertificateData"]).encode()
            key = str(status.get("clientKeyData", "")).encode()
    return Credentials(token=token, basic=basic, client_cert_data=cert, client_key_data=key)


def _run_exec_plugin(spec: dict[str, Any], config: KubeConfig) -> dict[str, Any]:
    """Run a client-go credential plugin (in the kubeconfig's directory, so that a relative
    command resolves there) and return its ExecCredential status."""
    command = spec.get("command")
    if not command:
        raise KubeError("the kubeconfig's exec credential plugin has no command")
    env = dict(os.environ)
    for item in spec.get("env") or []:
        env[item["name"]] = item["value"]
    api_version = spec.get("apiVersion", "client.authentication.k8s.io/v1")
    exec_spec: dict[str, Any] = {"interactive": False}
    if spec.get("provideClusterInfo"):
        cluster: dict[str, Any] = {"server": config.server}
        if config.tls_server_name:
            cluster["tls-server-name"] = config.tls_server_name
        if config.insecure:
            cluster["insecure-skip-tls-verify"] = True
        if config.ca_data:
            cluster["certificate-authority-data"] = base64.b64encode(config.ca_data).decode()
        if config.proxy_url:
            cluster["proxy-url"] = config.proxy_url
        exec_spec["cluster"] = cluster
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {"apiVersion": api_version, "kind": "ExecCredential", "spec": exec_spec}
    )
    try:
        done = subprocess.run(
            [command, *(spec.get("args") or [])],
            env=env,
            cwd=config.exec_dir or None,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KubeError(f"credential plugin {command} failed: {exc}") from None
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise KubeError(f"credential plugin {command} failed: {detail[-1] if detail else done.returncode}")
    try:
        credential = json.loads(done.stdout)
        status = credential["status"]
    except (ValueError, KeyError, TypeError):
        raise KubeError(f"credential plugin {command} printed no ExecCredential status") from None
    if credential.get("apiVersion") != api_version:  # as client-go
        raise KubeError(
            f"credential plugin {command} answered apiVersion {credential.get('apiVersion')}, "
            f"not the kubeconfig's {api_version}"
        )
    return dict(status)


def _https_connection(
    host: str,
    port: int,
    timeout: float,
    context: ssl.SSLContext,
    server_name: str | None,
    proxy: tuple[str, int, dict[str, str]] | None,
) -> http.client.HTTPSConnection:
    """HTTPS to host:port, through an HTTP proxy's CONNECT tunnel when `proxy` is given,
    verifying the kubeconfig's tls-server-name instead of the host when it has one."""
    import http.client

    name = server_name or host

    class HTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            http.client.HTTPConnection.connect(self)  # TCP, and the CONNECT tunnel if any
            self.sock = context.wrap_socket(self.sock, server_hostname=name)

    if proxy is None:
        return HTTPSConnection(host, port, timeout=timeout, context=context)
    proxy_host, proxy_port, proxy_headers = proxy
    conn = HTTPSConnection(proxy_host, proxy_port, timeout=timeout, context=context)
    conn.set_tunnel(host, port, headers=proxy_headers)
    return conn


def _parse_proxy(url: str) -> tuple[str, int, dict[str, str]]:
    """(host, port, headers) of a kubeconfig's proxy-url; only http:// proxies are supported."""
    from urllib.parse import unquote

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise KubeError(
            f'proxy-url "{url}" is not supported: kubectl-mesh speaks to http:// proxies only '
            "(no https:// or socks5:// proxies)"
        )
    headers = {}
    if parts.username is not None:
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
    return parts.hostname, parts.port or 80, headers


class KubeClient:
    """JSON requests to the API server; one keep-alive connection per thread (thread-safe)."""

    def __init__(self, config: KubeConfig, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.config = config
        self.timeout = timeout
        parts = urlsplit(config.server)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise KubeError(f'cluster server "{config.server}" is not an http(s) URL')
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._base_path = parts.path.rstrip("/")
        self._proxy = _parse_proxy(config.proxy_url) if config.proxy_url else None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        self._headers: dict[str, str] | None = None

    # -- connection set-up -------------------------------------------------------------------
    def _prepare(self) -> None:
        with self._lock:
            if self._headers is not None:
                return
            creds = credentials(self.config)
            headers = {"Accept": "application/json", "User-Agent": "kubectl-mesh"}
            if creds.token:
                headers["Authorization"] = f"Bearer {creds.token}"
            elif creds.basic is not None:
                basic = base64.b64encode(":".join(creds.basic).encode()).decode()
                headers["Authorization"] = f"Basic {basic}"
            if self._scheme == "https":
                self._ssl = self._ssl_context(creds.client_cert_data, creds.client_key_data)
            elif self._proxy is not None:
                headers.update(self._proxy[2])  # plain HTTP through the proxy: it reads our requests
            self._headers = headers

    def _ssl_context(self, cert: bytes | None, key: bytes | None) -> ssl.SSLContext:
        import ssl

        cfg = self.config
        if cfg.insecure:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif cfg.ca_data:
            try:
                ctx = ssl.create_default_context(cadata=cfg.ca_data.decode())
            except (ssl.SSLError, ValueError):  # UnicodeDecodeError is a ValueError
                raise KubeError(
                    f"{cfg.ca_origin or 'the kubeconfig certificate-authority'} is not a PEM certificate "
                    "(unable to load root certificates)"
                ) from None
        else:
            ctx = ssl.create_default_context()
        if cert and key:
            # ssl loads client certificates from files only: a private temp dir, removed at once.
            with tempfile.TemporaryDirectory(prefix="kubectl-mesh-") as tmp:
                cert_path, key_path = Path(tmp, "client.crt"), Path(tmp, "client.key")
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(key)
                cert_path.write_bytes(cert)
                try:
                    ctx.load_cert_chain(cert_path, key_path)
                except ssl.SSLError as exc:
                    raise KubeError(
                        f"{cfg.user_origin or 'the kubeconfig user'}: client-certificate or client-key "
                        f"is unusable (not a PEM certificate and its key?): {exc.reason or exc}"
                    ) from None
        return ctx

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.new_connection()
            self._local.conn = conn
        return conn

    def new_connection(self) -> http.client.HTTPConnection:
        """A connection of its own (TLS, proxy and all), not yet connected: for a stream that
        outlives one request (port-forward upgrades it to a WebSocket)."""
        import http.client

        self._prepare()
        if self._scheme == "https":
            assert self._ssl is not None
            return _https_connection(
                self._host, self._port, self.timeout, self._ssl, self.config.tls_server_name, self._proxy
            )
        if self._proxy is not None:  # absolute-form requests to the proxy
            return http.client.HTTPConnection(self._proxy[0], self._proxy[1], timeout=self.timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def stream_request_parts(self, path: str) -> tuple[str, str, dict[str, str]]:
        """(host header, request target, headers with credentials) for a request on new_connection()."""
        self._prepare()
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}", self._base_path + path, dict(self._headers or {})

    # -- requests ------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        accept: str = "application/json",
    ) -> tuple[int, bytes]:
        """One request; returns (status, body). Network failures raise KubeError."""
        url = self._base_path + path + (f"?{urlencode(params)}" if params else "")
        if self._proxy is not None and self._scheme == "http":
            host = f"[{self._host}]" if ":" in self._host else self._host
            url = f"http://{host}:{self._port}{url}"
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            conn = self._connection()
            headers = dict(self._headers or {})
            headers["Accept"] = accept
            if data is not None:
                headers["Content-Type"] = "application/json"
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                return resp.status, payload
            except (ConnectionResetError, BrokenPipeError) as exc:  # a stale keep-alive connection
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise self._unreachable(exc) from None
            except Exception as exc:  # http.client.HTTPException and friends
                conn.close()
                self._local.conn = None
                raise self._unreachable(exc) from None
        raise AssertionError("unreachable")

    def _unreachable(self, exc: BaseException) -> KubeError:
        reason = (
            getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        )
        return KubeError(
            f"cannot reach the Kubernetes API server at {self.config.server} (context "
            f'"{self.config.context}"): {reason}; check `kubectl cluster-info` or pick another --context'
        )

    def get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        status, payload = self.request("GET", path, params=params)
        return self._decode(status, payload, "GET", path)

    def post_json(self, path: str, body: Any) -> dict[str, Any]:
        status, payload = self.request("POST", path, body=body)
        return self._decode(status, payload, "POST", path)

    def _decode(self, status: int, payload: bytes, method: str, path: str) -> dict[str, Any]:
        try:
            doc = json.loads(payload) if payload else {}
        except ValueError:
            doc = {}
        if status >= 400:
            message = doc.get("message") if isinstance(doc, dict) else None
            reason = doc.get("reason", "") if isinstance(doc, dict) else ""
            if status == 401:
                message = (
                    f"the API server rejected our credentials (context {self.config.context}): {message}"
                )
            raise KubeError(
                message or f"{method} {path}: HTTP {status} {payload[:200]!r}", status=status, reason=reason
            )
        if not isinstance(doc, dict):
            raise KubeError(f"{method} {path}: the API server sent no JSON object")
        return doc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


def connect(options: KubeOptions, timeout: float = DEFAULT_TIMEOUT_S) -> KubeClient:
    """A client for the options' kubeconfig and context (nothing is sent yet); the options'
    request timeout, when given, wins over `timeout`."""
    return KubeClient(
        load_config(options.kubeconfig, options.context), timeout=options.request_timeout or timeout
    )


def resolve_namespace(options: KubeOptions) -> tuple[str, bool]:
    """(namespace, given): the typed -n if any, else the context's namespace, else "default".

    Reads the kubeconfig only when no namespace was given (and tolerates its absence then)."""
    if options.namespace:
        return options.namespace, True
    try:
        return load_config(options.kubeconfig, options.context).namespace, False
    except KubeError:
        return "default", False
