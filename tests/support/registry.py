"""A real CNCF Distribution registry on loopback, and `crane` to read it back, for tests.

Binaries come from ``scripts/registry-binaries`` (built from Go modules and cached outside the
checkout) or from the directory named by ``REGISTRY_BIN_DIR``. The registry serves TLS with a
certificate from a throw-away CA (so clients must be given the CA, as in a real cluster), with
htpasswd (bcrypt) basic auth and deletes enabled; ``tls=False`` serves plain HTTP.
"""

from __future__ import annotations

import base64
import ctypes
import datetime
import http.server
import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from tests.support.processes import built_bin_dir, free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1


class RegistryError(RuntimeError):
    pass


def registry_bin_dir() -> Path:
    """Directory holding `registry` and `crane`, building them if needed."""
    return built_bin_dir("REGISTRY_BIN_DIR", "registry-binaries")


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


_CA_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True,
    content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, encipher_only=False, decipher_only=False,
)  # fmt: skip


def make_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "build-context test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    # A token-signing certificate from the same CA, for token auth (see TokenServer).
    signer = ec.generate_private_key(ec.SECP256R1())
    signing = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")]))
        .issuer_name(ca_name)
        .public_key(signer.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "signer.pem").write_bytes(_pem_key(signer))
    (folder / "signer.crt").write_bytes(signing.public_bytes(serialization.Encoding.PEM))
    return paths


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A docker token service (the `Bearer realm=…` flow) on loopback over TLS: checks the
    basic credentials and issues an ES256 JWT for the requested scope, signed with a
    certificate of the test CA (sent in `x5c`), which the registry trusts."""

    SERVICE = "build-context-test-registry"
    ISSUER = "build-context-test-tokens"

    def __init__(self, workdir: Path, credentials: Credentials) -> None:
        self.workdir = workdir
        self.credentials = credentials
        key = serialization.load_pem_private_key(
            (workdir / "signer.pem").read_bytes(), password=None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.key = key
        signing = x509.load_pem_x509_certificate((workdir / "signer.crt").read_bytes())
        self.x5c = [base64.b64encode(signing.public_bytes(serialization.Encoding.DER)).decode()]
        self.issued: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                expected = (
                    "Basic "
                    + base64.b64encode(
                        f"{server.credentials.username}:{server.credentials.password}".encode()
                    ).decode()
                )
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                scopes = query.get("scope", [])
                body = json.dumps({"token": server.token(scopes), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(workdir / "cert.pem", workdir / "key.pem")
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        # By name: crane (go-containerregistry) refuses a realm given as a private IP literal.
        return f"https://localhost:{self.port}/token"

    def token(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": self.x5c}
        claims = {
            "iss": self.ISSUER, "sub": self.credentials.username, "aud": self.SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
            "access": access,
        }  # fmt: skip
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s_ = utils.decode_dss_signature(der)
        token = f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s_.to_bytes(32, 'big'))}"
        self.issued.append(token)
        return token

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


class Registry:
    """`registry serve` in a folder of its own; `stop()` and `start()` again keep its storage."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: bool = True,
        auth: str = "htpasswd",
        start_timeout: float = 30.0,
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.auth = auth
        self.tokens: TokenServer | None = None
        self.start_timeout = start_timeout
        self.bin_dir = registry_bin_dir()
        self.admin = Credentials("builder", secrets.token_hex(12))
        self.port = free_port()
        self.ca_path: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.storage = workdir / "storage"
        self._configure()

    @property
    def host(self) -> str:
        """The registry as a reference names it: host:port."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def _configure(self) -> None:
        htpasswd = self.workdir / "htpasswd"
        hashed = bcrypt.hashpw(self.admin.password.encode(), bcrypt.gensalt(rounds=5)).decode()
        htpasswd.write_text(f"{self.admin.username}:{hashed}\n")
        http: dict[str, Any] = {
            "addr": f"{HOST}:{self.port}",
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.tls:
            self.ca_path, cert, key = make_ca_and_server_cert(self.workdir)
            http["tls"] = {"certificate": str(cert), "key": str(key)}
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
            "auth": {"htpasswd": {"realm": "build-context-tests", "path": str(htpasswd)}},
        }
        if self.auth == "token":
            assert self.tls, "token auth needs the test CA"
            self.tokens = TokenServer(self.workdir, self.admin)
            config["auth"] = {
                "token": {
                    "realm": self.tokens.realm,
                    "service": TokenServer.SERVICE,
                    "issuer": TokenServer.ISSUER,
                    "rootcertbundle": str(self.ca_path),
                }
            }
        # JSON is YAML: the registry reads it as its config file.
        (self.workdir / "config.yml").write_text(json.dumps(config, indent=2))

    def start(self) -> Registry:
        if self._process is not None and self._process.poll() is None:
            return self
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.bin_dir / "registry"), "serve", str(self.workdir / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RegistryError(f"registry exited at start-up:\n{self.log_tail()}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RegistryError(f"registry not ready within {self.start_timeout}s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.ca_path))
        request = urllib.request.Request(f"{self.url}/v2/")
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                return int(response.status) == 200
        except urllib.error.HTTPError as error:
            return error.code == 401  # up, and asking for credentials as configured
        except OSError:
            return False

    def stop(self) -> None:
        if self.tokens is not None:
            self.tokens.stop()
            self.tokens = None
        process, self._process = self._process, None
        stop_process(process)

    def kill(self) -> None:
        """An outage as a crash: no chance to finish what is in flight."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- what a user or builder does ---------------------------------------------------------

    def docker_config(self, path: Path, credentials: Credentials | None = None) -> Path:
        """A docker config.json (what a kubernetes.io/dockerconfigjson pull secret holds)."""
        credentials = credentials or self.admin
        auth = base64.b64encode(f"{credentials.username}:{credentials.password}".encode())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"auths": {self.host: {"auth": auth.decode()}}}))
        return path

    def function_env(self, repository_prefix: str, docker_config: Path) -> dict[str, str]:
        """The environment that points the function's OCI store here, under `repository_prefix`,
        with the credentials of `docker_config` (see `docker_config`)."""
        env = {
            "BUILD_CONTEXT_OCI_REGISTRY": self.host,
            "BUILD_CONTEXT_OCI_REPOSITORY": repository_prefix,
            "BUILD_CONTEXT_OCI_DOCKER_CONFIG": str(docker_config),
        }
        if self.ca_path is not None:
            env["BUILD_CONTEXT_OCI_CA_FILE"] = str(self.ca_path)
        if not self.tls:
            env["BUILD_CONTEXT_OCI_INSECURE_HTTP"] = "true"
        return env

    def crane(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """`crane` with our credentials (its own docker config) and CA; stdout as bytes."""
        config_dir = self.workdir / "crane-docker-config"
        if not (config_dir / "config.json").exists():
            self.docker_config(config_dir / "config.json")
        env = {**os.environ, "DOCKER_CONFIG": str(config_dir)}
        if self.ca_path is not None:
            env["SSL_CERT_FILE"] = str(self.ca_path)
        command = [str(self.bin_dir / "crane"), *args]
        if not self.tls:
            command.append("--insecure")
        result = subprocess.run(command, capture_output=True, env=env, timeout=120)
        if check and result.returncode != 0:
            raise RegistryError(
                f"crane {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')[-2000:]}"
            )
        return result

    def tags(self, repository: str) -> list[str]:
        result = self.crane("ls", f"{self.host}/{repository}", check=False)
        if result.returncode != 0:
            if b"NAME_UNKNOWN" in result.stderr:
                return []
            raise RegistryError(result.stderr.decode(errors="replace")[-2000:])
        return result.stdout.decode().split()

    def catalog(self) -> list[str]:
        return self.crane("catalog", self.host).stdout.decode().split()


def start_registry(workdir: Path, **options: Any) -> Registry:
    return Registry(workdir, **options).start()
