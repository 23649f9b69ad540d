"""The issuer's keys: read once, cached, re-read when a token names a key we have not seen.

The test apiserver has one signing key for its whole life, so key rotation is shown against
`IssuerDouble`, a small local HTTP server that plays the issuer (discovery document and JWKS)
and counts how often it is asked. The verifier under test is the real one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from function import auth
from function.settings import load_settings

ISSUER = "https://kubernetes.default.svc.cluster.local"
SUBJECT = "system:serviceaccount:ns:build-context-requests-oidc-eventing.knative.dev-trigger"


class IssuerDouble:
    """Serves `/.well-known/openid-configuration` and `/jwks` on loopback; counts the reads.
    A test that clears `answering` holds every key read until it sets it again (`asked` says
    one is waiting)."""

    def __init__(self) -> None:
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.reads = {"discovery": 0, "jwks": 0}
        self.asked = threading.Event()
        self.answering = threading.Event()
        self.answering.set()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    double.reads["discovery"] += 1
                    body: dict[str, Any] = {"issuer": ISSUER, "jwks_uri": f"{double.url}/jwks"}
                elif self.path == "/jwks":
                    double.reads["jwks"] += 1
                    double.asked.set()
                    double.answering.wait(60)
                    body = {"keys": [double.jwk(kid) for kid in double.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def rotate(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def jwk(self, kid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            jwt.algorithms.ECAlgorithm.to_jwk(self.keys[kid].public_key())
        )
        return {**data, "kid": kid, "use": "sig", "alg": "ES256"}

    def token(self, kid: str, audience: str = "build-context") -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": [audience], "sub": SUBJECT, "iat": now, "nbf": now}
        claims["exp"] = now + 600
        return jwt.encode(claims, self.keys[kid], algorithm="ES256", headers={"kid": kid})


def serving_issuer() -> Iterator[IssuerDouble]:
    """The body of an `issuer` fixture: an issuer with the key `key-1`, stopped at the end."""
    double = IssuerDouble()
    double.rotate("key-1")
    yield double
    double.answering.set()
    double.server.shutdown()


@pytest.fixture
def issuer() -> Iterator[IssuerDouble]:
    yield from serving_issuer()


def verifier(issuer: IssuerDouble) -> auth.TokenVerifier:
    return auth.TokenVerifier(
        load_settings(
            auth="oidc", auth_discovery_url=f"{issuer.url}/.well-known/openid-configuration"
        )
    )


def test_keys_are_read_once_and_cached(issuer: IssuerDouble) -> None:
    checker = verifier(issuer)
    for _ in range(20):
        assert checker.verify(f"Bearer {issuer.token('key-1')}").subject == SUBJECT
    assert issuer.reads == {"discovery": 1, "jwks": 1}


def test_a_new_key_is_fetched_when_a_token_names_it(
    issuer: IssuerDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "REFRESH_COOLDOWN_SECONDS", 0.0)  # the 30 s cooldown is below
    checker = verifier(issuer)
    assert checker.verify(f"Bearer {issuer.token('key-1')}").subject == SUBJECT
    issuer.rotate("key-2")
    assert checker.verify(f"Bearer {issuer.token('key-2')}").subject == SUBJECT
    assert issuer.reads["jwks"] == 2
    assert checker.verify(f"Bearer {issuer.token('key-1')}").subject == SUBJECT
    assert issuer.reads["jwks"] == 2, "both keys now cached"


def test_made_up_key_ids_cannot_make_us_hammer_the_issuer(issuer: IssuerDouble) -> None:
    checker = verifier(issuer)
    assert checker.verify(f"Bearer {issuer.token('key-1')}").subject == SUBJECT
    issuer.rotate("stranger")
    for _ in range(10):
        forged = issuer.token("stranger")
        issuer.keys.pop("stranger")  # the issuer never published it
        with pytest.raises(auth.Refused) as refused:
            checker.verify(f"Bearer {forged}")
        assert refused.value.status == 401
        issuer.rotate("stranger")
    assert issuer.reads["jwks"] == 1, "within the cooldown an unknown kid re-reads nothing"


def test_every_routed_event_type_has_a_sender_policy(tmp_path: Path) -> None:
    """A new route cannot slip past the sender check: with BUILD_CONTEXT_AUTH=oidc its handler
    needs a policy (audience, allowed subjects), or its events would all fail with a 500."""
    from function.app import App
    from function.func import Function
    from function.telemetry import NOOP

    settings = load_settings(
        auth="oidc", fs_root=tmp_path, auth_discovery_url="http://127.0.0.1:9/discovery"
    )
    app = App.from_settings(settings, telemetry=NOOP)
    try:
        routes = Function(app).routes
        assert app.senders is not None and routes
        assert {route.handler for route in routes.values()} <= set(app.senders.policies)
    finally:
        app.close()
