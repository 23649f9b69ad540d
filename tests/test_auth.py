"""Sender identity (BUILD_CONTEXT_AUTH=oidc) with real ServiceAccount tokens.

The test kube-apiserver issues the tokens (TokenRequest, with an audience and an expiry) and
serves the issuer's OIDC discovery and keys; the function reads them as it would in a pod: with
its own ServiceAccount token and the cluster's CA. Everything goes over real HTTP to the real
server. The few tokens a TokenRequest cannot give (already expired, another key, `alg: none`,
a changed payload) are made from a real token's claims and say so.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import StartServer
from tests.support.cli import run_cli
from tests.support.contexts import example
from tests.support.kube import KubeAPIServer
from tests.support.server import ROOT, FunctionServer
from tests.test_cleanup import age

pytestmark = pytest.mark.kube

TRIGGER_SA = "build-context-requests-oidc-eventing.knative.dev-trigger"
PING_SA = "build-context-cleanup-oidc-sources.knative.dev-pingsource"
CREATE_AUDIENCE = "build-context"
CLEANUP_AUDIENCE = "build-context-cleanup"
PING = "dev.knative.sources.ping"


class Cluster:
    """One fresh namespace of the test apiserver, and the function's view of its issuer."""

    def __init__(self, kube: KubeAPIServer, tmp_path: Path) -> None:
        self.kube = kube
        self.namespace = kube.new_namespace("auth")
        own = tmp_path / "function-sa.token"
        own.write_text(kube.service_account_token(self.namespace, "build-context"))
        assert kube.ca_file is not None
        self.env = {
            "BUILD_CONTEXT_AUTH": "oidc",
            "BUILD_CONTEXT_NAMESPACE": self.namespace,
            "BUILD_CONTEXT_AUTH_DISCOVERY_URL": f"{kube.url}/.well-known/openid-configuration",
            "BUILD_CONTEXT_AUTH_CA_FILE": str(kube.ca_file),
            "BUILD_CONTEXT_AUTH_TOKEN_FILE": str(own),
        }

    def token(self, account: str, audience: str, seconds: int = 3600) -> str:
        return self.kube.service_account_token(self.namespace, account, [audience], seconds)

    def subject(self, account: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{account}"


@pytest.fixture
def cluster(kube: KubeAPIServer, tmp_path: Path) -> Cluster:
    return Cluster(kube, tmp_path)


@pytest.fixture
def guarded(cluster: Cluster, start_server: StartServer) -> FunctionServer:
    """Both handlers in one server, identity on; contexts deletable as soon as they expire."""
    return start_server(
        **cluster.env, BUILD_CONTEXT_KEEP_LATEST="0", BUILD_CONTEXT_CLEANUP_GRACE_SECONDS="0"
    )


def stored(server: FunctionServer) -> list[Path]:
    return sorted((server.workdir / "contexts").rglob("context.tar.gz"))


def ping(server: FunctionServer, token: str | None) -> Any:
    return server.send({}, type=PING, token=token)


def _segments(token: str) -> list[str]:
    return token.split(".")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def made_expired(cluster: Cluster, real: str) -> str:
    """Made here, signed with the apiserver's own key and kid: TokenRequest's shortest expiry
    is 10 minutes, so a real token cannot be waited out in a test."""
    claims = _claims(real)
    now = int(time.time())
    claims.update(iat=now - 3600, nbf=now - 3600, exp=now - 120)
    return jwt.encode(
        claims,
        cluster.kube.signing_key.read_bytes(),
        algorithm="ES256",
        headers={"kid": jwt.get_unverified_header(real)["kid"]},
    )


def made_with_another_key(real: str) -> str:
    """A real token's header and claims, signed by a key the cluster never had."""
    other = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(
        _claims(real), other, algorithm="ES256", headers=jwt.get_unverified_header(real)
    )


def made_alg_none(real: str) -> str:
    header = {**jwt.get_unverified_header(real), "alg": "none"}
    head = _b64(json.dumps(header).encode())
    return f"{head}.{_segments(real)[1]}."


def made_tampered(real: str, subject: str) -> str:
    """A real token (of another account) whose payload now names the allowed subject; the
    signature is the original one."""
    header, _, signature = _segments(real)
    claims = {**_claims(real), "sub": subject}
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def metric(server: FunctionServer, name: str, **labels: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def refusals(server: FunctionServer) -> list[dict[str, Any]]:
    return [line for line in server.log_lines() if line.get("message") == "sender refused"]


def test_the_triggers_identity_creates_and_the_pingsources_cleans_up(
    cluster: Cluster, guarded: FunctionServer
) -> None:
    created = guarded.send(example("python"), token=cluster.token(TRIGGER_SA, CREATE_AUDIENCE))
    assert created.status == 200 and created.type == "buildcontext.created", created
    assert len(stored(guarded)) == 1
    age(created.data, timedelta(days=8))
    cleaned = ping(guarded, cluster.token(PING_SA, CLEANUP_AUDIENCE))
    assert cleaned.type == "buildcontext.cleanup.completed", cleaned
    assert cleaned.data["stores"][0]["deleted"] == 1
    assert stored(guarded) == []
    assert refusals(guarded) == []


def test_bad_or_missing_tokens_are_refused_and_nothing_is_stored(
    cluster: Cluster, guarded: FunctionServer
) -> None:
    trigger = cluster.token(TRIGGER_SA, CREATE_AUDIENCE)
    other = cluster.token("someone-else", CREATE_AUDIENCE)
    cases: list[tuple[str, str | None, int, str]] = [
        ("no token", None, 401, "missing_token"),
        ("wrong audience", cluster.token(TRIGGER_SA, "not-build-context"), 401, "wrong_audience"),
        ("expired", made_expired(cluster, trigger), 401, "expired_token"),
        ("another ServiceAccount", other, 403, "forbidden_subject"),
        ("another key", made_with_another_key(trigger), 401, "invalid_token"),
        ("alg none", made_alg_none(trigger), 401, "invalid_token"),
        (
            "tampered payload",
            made_tampered(other, cluster.subject(TRIGGER_SA)),
            401,
            "invalid_token",
        ),
        ("not a JWT", "not-a-token", 401, "invalid_token"),
        (
            "the apiserver's audience",
            cluster.token(TRIGGER_SA, cluster.kube.audiences[0]),
            401,
            "wrong_audience",
        ),
    ]
    for name, token, status, reason in cases:
        reply = guarded.send(example("python"), token=token)
        assert reply.status == status, (name, reply)
        assert reply.type is None, name
        assert reply.data["reason"] == reason, (name, reply.data)
        assert reply.headers["content-type"] == "application/json", name
        if status == 401:
            assert reply.headers["www-authenticate"].startswith("Bearer"), name
        assert stored(guarded) == [], name
    logged = refusals(guarded)
    assert [line["reason"] for line in logged] == [case[3] for case in cases]
    assert all(trigger not in json.dumps(line) for line in logged), "tokens never logged"
    assert logged[3]["subject"] == cluster.subject("someone-else")
    assert metric(guarded, "build_context_auth_refused_total", reason="invalid_token") == 4
    assert metric(guarded, "build_context_auth_refused_total", status="403") == 1
    # and the right token still works afterwards
    assert guarded.send(example("python"), token=trigger).type == "buildcontext.created"


def test_each_identity_may_call_only_its_own_handler(
    cluster: Cluster, guarded: FunctionServer
) -> None:
    created = guarded.send(example("python"), token=cluster.token(TRIGGER_SA, CREATE_AUDIENCE))
    assert created.type == "buildcontext.created", created
    age(created.data, timedelta(days=8))
    attempts = [
        ("trigger's token pings", cluster.token(TRIGGER_SA, CREATE_AUDIENCE), "wrong_audience"),
        (
            "trigger's SA, cleanup audience",
            cluster.token(TRIGGER_SA, CLEANUP_AUDIENCE),
            "forbidden_subject",
        ),
        ("no token", None, "missing_token"),
    ]
    for name, token, reason in attempts:
        reply = ping(guarded, token)
        assert reply.status in (401, 403) and reply.data["reason"] == reason, (name, reply)
        assert len(stored(guarded)) == 1, f"{name}: nothing deleted"
    for name, token, reason in [
        ("pingsource's token creates", cluster.token(PING_SA, CLEANUP_AUDIENCE), "wrong_audience"),
        (
            "pingsource's SA, create audience",
            cluster.token(PING_SA, CREATE_AUDIENCE),
            "forbidden_subject",
        ),
    ]:
        other = {**example("python"), "lambdaFunction": "other-fix"}
        reply = guarded.send(other, token=token)
        assert reply.status == 403 and reply.data["reason"] == reason, (name, reply)
        assert len(stored(guarded)) == 1, f"{name}: nothing stored"
    # the PingSource's own token still deletes what the refused pings left alone
    cleaned = ping(guarded, cluster.token(PING_SA, CLEANUP_AUDIENCE))
    assert cleaned.type == "buildcontext.cleanup.completed", cleaned
    assert stored(guarded) == []


def test_subjects_may_name_other_namespaces_and_several_accounts(
    cluster: Cluster, start_server: StartServer
) -> None:
    server = start_server(
        **cluster.env,
        BUILD_CONTEXT_HANDLERS="create",
        BUILD_CONTEXT_AUTH_CREATE_SUBJECTS=f"agent, {cluster.subject('tester')}",
    )
    for account in ("agent", "tester"):
        reply = server.send(example("python"), token=cluster.token(account, CREATE_AUDIENCE))
        assert reply.type == "buildcontext.created", (account, reply)
    refused = server.send(example("python"), token=cluster.token(TRIGGER_SA, CREATE_AUDIENCE))
    assert refused.status == 403, "the default subject is replaced, not added to"


def test_unreachable_keys_are_a_retryable_503_and_health_needs_no_token(
    cluster: Cluster, start_server: StartServer
) -> None:
    env = {**cluster.env, "BUILD_CONTEXT_AUTH_DISCOVERY_URL": "https://127.0.0.1:9/nothing"}
    server = start_server(**env)
    reply = server.send(example("python"), token=cluster.token(TRIGGER_SA, CREATE_AUDIENCE))
    assert reply.status == 503 and reply.data["reason"] == "keys_unavailable", reply
    assert stored(server) == []
    assert requests.get(f"{server.url}/health/readiness", timeout=5).ok


def test_a_token_naming_a_key_the_issuer_does_not_have_is_refused(
    cluster: Cluster, guarded: FunctionServer
) -> None:
    trigger = cluster.token(TRIGGER_SA, CREATE_AUDIENCE)
    assert guarded.send(example("python"), token=trigger).type == "buildcontext.created"
    header = {**jwt.get_unverified_header(trigger), "kid": "unknown-key"}
    forged = ".".join([_b64(json.dumps(header).encode()), *_segments(trigger)[1:]])
    for _ in range(5):
        reply = guarded.send(example("python"), token=forged)
        assert reply.status == 401 and reply.data["reason"] == "invalid_token", reply


def test_the_send_command_attaches_a_token_from_a_file_or_the_apiserver(
    cluster: Cluster, guarded: FunctionServer, tmp_path: Path
) -> None:
    def send(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(
            "send",
            guarded.url,
            *args,
            cwd=ROOT,
            env={"KUBECONFIG": str(cluster.kube.kubeconfig_path)},
            timeout=120,
        )

    request = str(ROOT / "examples" / "python.json")
    refused = send("--data", request)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr, refused
    token_file = tmp_path / "trigger.token"
    token_file.write_text(cluster.token(TRIGGER_SA, CREATE_AUDIENCE) + "\n")
    from_file = send("--data", request, "--token-file", str(token_file))
    assert from_file.returncode == 0, from_file
    assert json.loads(from_file.stdout)["lambdaFunction"] == "restart-crashlooping"
    minted = send("--data", request, "--token-for", f"{cluster.namespace}/{TRIGGER_SA}")
    assert minted.returncode == 0 and json.loads(minted.stdout)["reused"] is True, minted
    missing = send("--data", request, "--token-for", f"{cluster.namespace}/nobody")
    assert missing.returncode != 0 and "TokenRequest (404" in missing.stderr, missing
    cluster.token(PING_SA, CLEANUP_AUDIENCE)  # creates the ServiceAccount, as Knative does
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    ping = send(
        "--type", PING, "--data", str(empty), "--token-for", f"{cluster.namespace}/{PING_SA}"
    )
    assert ping.returncode == 0, ping
    assert "ce-type: buildcontext.cleanup.completed" in ping.stderr.lower()
