"""A real kube-apiserver backed by etcd, for tests.

Binaries come from ``scripts/kube-binaries`` (built from Go modules and cached
outside the checkout) or from the directory named by ``KUBE_BIN_DIR``.

Only the API server runs: no controller-manager, scheduler or kubelet. So
namespaces are never finalized after deletion (use unique names), no
``default`` ServiceAccount appears in new namespaces, and nothing reconciles
Deployments, Pods or Services.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import kubernetes.client
import urllib3
import yaml
from kubernetes.client.rest import ApiException

from tests.support.polling import poll_until

PROBE_ERRORS = (OSError, ValueError, http.client.HTTPException)
"""A start-up probe that fails this way (refused, timed out, cut short, not JSON yet) is retried
until the deadline: a busy machine makes a server slow to answer, not broken."""
API_ERRORS = (ApiException, urllib3.exceptions.HTTPError)

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT.parent / "shared" / "crds"
ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "admin"


def kube_bin_dir() -> Path:
    """Directory holding kube-apiserver, kubectl, kube-controller-manager and etcd, building
    them if needed."""
    if env_dir := os.environ.get("KUBE_BIN_DIR"):
        return Path(env_dir)
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "kube-binaries")],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return Path(result.stdout.strip().splitlines()[-1])


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class _PortTaken(RuntimeError):
    """A process lost the race for a port that was free when picked."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} missing)"
    return "\n".join(text.splitlines()[-lines:])


def _write_signing_key(path: Path) -> None:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        subprocess.run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path)],
            check=True,
            capture_output=True,
        )
        return
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class KubeAPIServer:
    """etcd + kube-apiserver on loopback ports, with an admin token and a kubeconfig."""

    def __init__(
        self,
        bin_dir: Path | None = None,
        startup_timeout: float = 90.0,
        audiences: tuple[str, ...] = (ISSUER,),
    ) -> None:
        self.bin_dir = bin_dir
        self.startup_timeout = startup_timeout
        self.audiences = audiences
        self.token = secrets.token_hex(16)
        self.url = ""
        self.workdir: Path | None = None
        self.kubeconfig_path: Path | None = None
        self.ca_file: Path | None = None
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> KubeAPIServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def etcd_log(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "etcd.log"

    @property
    def signing_key(self) -> Path:
        """The private key this server signs ServiceAccount tokens with (PEM)."""
        assert self.workdir is not None
        return self.workdir / "sa.key"

    @property
    def apiserver_log(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "kube-apiserver.log"

    def start(self) -> None:
        if self.bin_dir is None:
            self.bin_dir = kube_bin_dir()
        for attempt in range(3):
            self.workdir = Path(tempfile.mkdtemp(prefix="kube-apiserver-"))
            try:
                etcd_port, peer_port, apiserver_port = _free_ports(3)
                etcd_url = self._start_etcd(etcd_port, peer_port)
                self._start_apiserver(etcd_url, apiserver_port)
                self._write_kubeconfig()
                return
            except _PortTaken:
                self.stop()
                if attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        _stop_process(self._apiserver)
        _stop_process(self._etcd)
        self._apiserver = self._etcd = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )

    def _startup_error(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"{what}\n--- etcd log tail ---\n{_tail(self.etcd_log)}"
            f"\n--- kube-apiserver log tail ---\n{_tail(self.apiserver_log)}"
        )

    def _wait_until(
        self, proc: subprocess.Popen[bytes], name: str, ready: Callable[[], bool]
    ) -> None:
        def up() -> bool:
            if proc.poll() is not None:
                error = self._startup_error(
                    f"{name} exited with code {proc.returncode} during startup"
                )
                if "address already in use" in str(error):
                    raise _PortTaken(str(error))
                raise error
            return ready()

        if not poll_until(up, self.startup_timeout, interval=0.25, transient=PROBE_ERRORS):
            raise self._startup_error(f"{name} not ready after {self.startup_timeout:.0f}s")

    def _start_etcd(self, client_port: int, peer_port: int) -> str:
        assert self.workdir is not None and self.bin_dir is not None
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._etcd = self._spawn(
            [
                str(self.bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.etcd_log,
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{client_url}/health", timeout=2) as resp:
                health: object = json.load(resp).get("health")
                return health == "true"

        self._wait_until(self._etcd, "etcd", healthy)
        return client_url

    def _start_apiserver(self, etcd_url: str, port: int) -> None:
        assert self.workdir is not None and self.bin_dir is not None
        self.url = f"https://127.0.0.1:{port}"
        cert_dir = self.workdir / "certs"
        ca_file = self.ca_file = cert_dir / "apiserver.crt"
        signing_key = self.signing_key
        _write_signing_key(signing_key)
        token_file = self.workdir / "tokens.csv"
        token_file.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        self._apiserver = self._spawn(
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={cert_dir}",
                f"--token-auth-file={token_file}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={signing_key}",
                f"--service-account-signing-key-file={signing_key}",
                # Discovery names the keys where this server serves them (in a cluster the
                # issuer's own host resolves to the apiserver; here it does not).
                f"--service-account-jwks-uri={self.url}/openid/v1/jwks",
                f"--api-audiences={','.join(self.audiences)}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                "--profiling=false",
            ],
            self.apiserver_log,
        )
        request = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )

        def ready() -> bool:
            if not ca_file.exists():
                return False
            context = ssl.create_default_context(cafile=str(ca_file))
            with urllib.request.urlopen(request, timeout=2, context=context) as resp:
                status: int = resp.status
                return status == 200

        self._wait_until(self._apiserver, "kube-apiserver", ready)

    def _write_kubeconfig(self) -> None:
        assert self.workdir is not None
        self.kubeconfig_path = self.write_kubeconfig(
            self.workdir / "kubeconfig", self.token, ADMIN_USER
        )

    def write_kubeconfig(self, path: Path, token: str, user: str) -> Path:
        """A kubeconfig for this server with a bearer token: the admin's, or a ServiceAccount's
        (what a pod's in-cluster configuration amounts to)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def client_for_token(self, token: str) -> kubernetes.client.ApiClient:
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"BearerToken": token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return kubernetes.client.ApiClient(configuration)

    def function_env(self, namespace: str) -> dict[str, str]:
        """The environment that points the function's ConfigMap store at this apiserver."""
        assert self.kubeconfig_path is not None, "server not started"
        return {"KUBECONFIG": str(self.kubeconfig_path), "BUILD_CONTEXT_NAMESPACE": namespace}

    def api_client(self) -> kubernetes.client.ApiClient:
        return self.client_for_token(self.token)

    def service_account_token(
        self,
        namespace: str,
        name: str,
        audiences: list[str] | None = None,
        expiration_seconds: int = 3600,
    ) -> str:
        """Create ServiceAccount ``namespace/name`` if missing and mint a token via TokenRequest.

        A token is accepted by this API server only if one of its audiences is in
        ``self.audiences``; the default is exactly those.
        """
        with self.api_client() as client:
            core = kubernetes.client.CoreV1Api(client)
            try:
                core.create_namespaced_service_account(
                    namespace,
                    kubernetes.client.V1ServiceAccount(
                        metadata=kubernetes.client.V1ObjectMeta(name=name)
                    ),
                )
            except ApiException as err:
                if err.status != 409:
                    raise
            request = kubernetes.client.AuthenticationV1TokenRequest(
                spec=kubernetes.client.V1TokenRequestSpec(
                    audiences=list(audiences or self.audiences),
                    expiration_seconds=expiration_seconds,
                )
            )
            response = core.create_namespaced_service_account_token(name, namespace, request)
            token: str = response.status.token
            return token


def kube_apiserver() -> Iterator[KubeAPIServer]:
    """Generator body for a pytest fixture: ``pytest.fixture(scope="session")(kube_apiserver)``."""
    with KubeAPIServer() as server:
        yield server


def load_crds(
    client: kubernetes.client.ApiClient, crd_dir: Path = CRD_DIR, timeout: float = 30.0
) -> list[str]:
    """Create every CRD in ``crd_dir/*.yaml`` (existing ones are kept) and wait until each is Established.

    Conversion webhooks are dropped: no webhook service runs next to a bare API server.
    """
    api = kubernetes.client.ApiextensionsV1Api(client)
    names: list[str] = []
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            doc["spec"].pop("conversion", None)
            try:
                api.create_custom_resource_definition(doc)
            except ApiException as err:
                if err.status != 409:
                    raise
            names.append(doc["metadata"]["name"])
    deadline = time.monotonic() + timeout
    for name in names:
        established = functools.partial(_crd_established, api, name)
        left = max(0.0, deadline - time.monotonic())
        if not poll_until(established, left, interval=0.2, transient=API_ERRORS):
            raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s")
    return names


def _crd_established(api: kubernetes.client.ApiextensionsV1Api, name: str) -> bool:
    crd = api.read_custom_resource_definition(name)
    conditions = (crd.status and crd.status.conditions) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)
