"""A TLS-intercepting HTTPS proxy on loopback, as a corporate network puts in front of the
package registries: it answers CONNECT, ends the client's TLS with a certificate for the
requested host minted by its own CA, and carries the bytes on over a new TLS connection to the
real host (checked against this machine's CAs). A client gets through only when it trusts the
proxy's CA: what a build needs the build-time CA secret for."""

from __future__ import annotations

import datetime
import select
import socket
import socketserver
import ssl
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.processes import HOST

_MAX_HEAD = 16 * 1024
_IDLE_SECONDS = 120


class InterceptingProxy:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intercepting proxy")])
        now = datetime.datetime.now(datetime.UTC)
        self._ca = (
            self._certificate(self._ca_name, now, self._key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_path = folder / "proxy-ca.pem"
        self.ca_path.write_bytes(self._ca.public_bytes(serialization.Encoding.PEM))
        (folder / "leaf-key.pem").write_bytes(
            self._leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.upstream = ssl.create_default_context()
        self.upstream.set_alpn_protocols(["http/1.1"])
        self.intercepted: set[str] = set()
        """Hosts whose client trusted the proxy's certificate."""
        self.tunnels = 0
        """Connections carried (the client trusted the proxy)."""
        self.refused: list[str] = []
        """Hosts whose client ended the handshake: it did not trust the proxy's CA."""
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._tunnel(self.request)

        socketserver.ThreadingTCPServer.daemon_threads = True
        self._server = socketserver.ThreadingTCPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _certificate(
        self, subject: x509.Name, now: datetime.datetime, key: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def _context_for(self, host: str) -> ssl.SSLContext:
        """A server context with a certificate for `host` (one key for every host)."""
        with self._lock:
            if host in self._contexts:
                return self._contexts[host]
            now = datetime.datetime.now(datetime.UTC)
            leaf = (
                self._certificate(
                    x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), now, self._leaf_key
                )
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                    critical=False,
                )
                .sign(self._key, hashes.SHA256())
            )
            chain = self.folder / f"{host}.pem"
            chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(chain, self.folder / "leaf-key.pem")
            context.set_alpn_protocols(["http/1.1"])
            self._contexts[host] = context
            return context

    def _tunnel(self, client: socket.socket) -> None:
        client.settimeout(_IDLE_SECONDS)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or not host or not port.isdigit():
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            inside = self._context_for(host).wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            self.refused.append(host)
            return
        self.intercepted.add(host)
        self.tunnels += 1
        with (
            inside,
            socket.create_connection((host, int(port)), timeout=_IDLE_SECONDS) as raw,
            self.upstream.wrap_socket(raw, server_hostname=host) as outside,
        ):
            _relay(inside, outside)


def _relay(inside: ssl.SSLSocket, outside: ssl.SSLSocket) -> None:
    """Copy both ways in one thread (an SSL socket is not for two threads at once) until a
    side ends or both stay idle."""
    other = {inside: outside, outside: inside}
    try:
        while True:
            ready = [s for s in other if s.pending()]
            ready = ready or select.select(list(other), [], [], _IDLE_SECONDS)[0]
            if not ready:
                return
            for sock in ready:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                other[sock].sendall(chunk)
    except OSError:
        return
