"""No credential of the request comes back: every quoted field kind, through the real server,
with the reply body and the server's log checked for the secret (and any 8 characters of it).

A refusal quotes what it refuses, cut to 64 characters; the cut used to fall before the '@'
of `user:password@host`, so the redaction that looks for it never saw it (issue 21)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from function import boundary, credentials
from tests.support.fake_credentials import ALNUM, UPPER, random
from tests.support.server import FunctionServer, encode


def secret() -> str:
    return random(ALNUM, 32)


def leaked(secret: str, text: str) -> bool:
    return any(secret[i : i + 8] in text for i in range(len(secret) - 7))


PAD = "payments-database-adapter"
"""Puts the secret across the 64th character: quoted in part, its `@` cut off."""

# name -> request data holding `secret` in one field that a refusal quotes
CASES: dict[str, Callable[[str], dict[str, Any]]] = {
    "pip URL dependency": lambda s: {
        "dependencies": [f"{PAD} @ https://deploy:{s}@pypi.internal.example.com/p/pkg-1.0.tar.gz"]
    },
    "pip URL dependency, token in the query": lambda s: {
        "dependencies": [f"pkg @ https://f.example/p-1.0.tar.gz?token={s}"]
    },
    "pip URL dependency, presigned S3": lambda s: {
        "dependencies": [
            f"pkg @ https://b.example/p.whl?X-Amz-Signature={s}"
            f"&X-Amz-Credential=AKIA{random(UPPER, 16)}"
        ]
    },
    "pip git+ssh dependency": lambda s: {
        "dependencies": [f"{PAD} @ git+ssh://deploy:{s}@git.example.com/org/pkg.git"]
    },
    "pip lock --index-url": lambda s: {
        "dependencies": ["requests>=2.31"],
        "lockFile": f"--index-url https://__token__:{s}@pypi.internal.example.com/simple\n"
        "requests==2.32.3 --hash=sha256:" + "a" * 64 + "\n",
    },
    "pip lock --extra-index-url, token in the path": lambda s: {
        "dependencies": ["requests>=2.31"],
        "lockFile": f"--extra-index-url=https://pypi.fury.io/{s}/org/\n"
        "requests==2.32.3 --hash=sha256:" + "a" * 64 + "\n",
    },
    "go module path with user:password@": lambda s: {
        "runtime": "go",
        "sourceCode": "package main\n\nfunc main() {}\n",
        "dependencies": [f"deploy:{s}@git.example.com/{PAD}/mod@v1.0.0"],
    },
    "npm URL spec": lambda s: {
        "runtime": "nodejs",
        "sourceCode": "console.log(1);\n",
        "dependencies": {"left-pad": f"https://deploy:{s}@registry.example.com/left-pad.tgz"},
    },
    "npm git+https token spec": lambda s: {
        "runtime": "nodejs",
        "sourceCode": "console.log(1);\n",
        "dependencies": {"left-pad": f"git+https://{s}@github.com/{PAD}/left-pad.git"},
    },
    "npm package name": lambda s: {
        "runtime": "nodejs",
        "sourceCode": "console.log(1);\n",
        "dependencies": {f"https://deploy:{s}@registry.example.com/x": "^1.0.0"},
    },
    "file path": lambda s: {"files": {f"lib/deploy:{s}@host/util.py": "x = 1\n"}},
    "lambdaFunction": lambda s: {"lambdaFunction": f"https://deploy:{s}@example.com/f"},
    "namespace": lambda s: {"namespace": f"https://deploy:{s}@example.com/ns"},
    "runtime": lambda s: {"runtime": f"https://deploy:{s}@example.com/python"},
    "runtimeVersion": lambda s: {"runtimeVersion": f"https://deploy:{s}@example.com/3.13"},
    "owner name": lambda s: {
        "owner": {
            "apiVersion": "lambda.example.com/v1",
            "kind": "LambdaFunction",
            "name": f"https://deploy:{s}@example.com/x",
            "uid": "6f1c2a9e-0b7d-4c3e-9a51-2f8e4d7c1b60",
        }
    },
    "metadata key with a token": lambda s: {"metadata": {f"ghp_{s}{s[:4]}": "INC-1"}},
    "metadata value with a token": lambda s: {"metadata": {"ticket": f"ghp_{s}{s[:4]}"}},
    "metadata value with a password": lambda s: {"metadata": {"db_password": s}},
    "metadata value with a connection string": lambda s: {
        "metadata": {"db": f"postgresql://app:{s}@db:5432/app"}
    },
    "metadata value with an assignment": lambda s: {"metadata": {"note": f"api_key={s}"}},
}


@pytest.fixture(scope="module", params=["refuse", "warn"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FunctionServer]:
    env = {"BUILD_CONTEXT_SECRET_SCAN": request.param}
    instance = FunctionServer(env, tmp_path_factory.mktemp(f"redaction-{request.param}")).start()
    yield instance
    instance.stop()


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refusal_never_repeats_a_credential(server: FunctionServer, case: str) -> None:
    value = secret()
    data = {"lambdaFunction": "leaky", "sourceCode": "print(1)\n", **CASES[case](value)}
    reply = server.send(data)
    assert reply.type == "buildcontext.failed", reply
    assert reply.data["reason"] in ("InvalidRequest", "InvalidSource", "UnsupportedRuntime")
    body = json.dumps(reply.data)
    assert not leaked(value, body), body
    assert not leaked(value, server.log())


def test_metadata_with_a_credential_is_refused_naming_the_key(server: FunctionServer) -> None:
    value = secret()
    stored = set(server.workdir.rglob("*.tar.gz"))
    reply = server.send(
        {
            "lambdaFunction": "leaky",
            "sourceCode": "print(1)\n",
            "metadata": {"ticket": "INC-1", "deployToken": f"ghp_{value}{value[:4]}"},
        }
    )
    assert reply.data["reason"] == "InvalidRequest"
    (error,) = reply.data["errors"]
    assert error["field"] == "metadata.deployToken"
    assert "GitHub token" in error["message"] and "metadata.deployToken" in reply.data["message"]
    assert not leaked(value, json.dumps(reply.data)) and not leaked(value, server.log())
    assert set(server.workdir.rglob("*.tar.gz")) == stored


def test_plain_metadata_is_stored(server: FunctionServer) -> None:
    metadata = {"ticket": "INC-1", "secretName": "db-credentials", "commit": "a" * 40}
    reply = server.send(
        {"lambdaFunction": "plain", "sourceCode": "print(1)\n", "metadata": metadata}
    )
    assert reply.type == "buildcontext.created", reply
    assert reply.data["metadata"] == metadata


def test_an_unknown_event_type_is_not_repeated_with_its_credential(server: FunctionServer) -> None:
    value = secret()
    headers, body = encode({"lambdaFunction": "x"}, type=f"https://deploy:{value}@example.com/t")
    response = server.session.post(server.url, headers=headers, data=body, timeout=30)
    assert response.status_code == 400
    assert not leaked(value, response.text) and not leaked(value, server.log())


@pytest.mark.parametrize(
    "text",
    [
        "pkg @ https://user:{s}@host/simple/pkg.tar.gz",
        "pkg @ https://user:p@ss{s}@host/x",
        "deploy:{s}@github.com/org/mod@v1.0.0",
        "git+https://{s}@github.com/org/x.git",
        "git+ssh://git:{s}@github.com/org/x.git",
        "--index-url https://pypi.example.com/{s}/simple",
        "--extra-index-url={s}",
        "-i https://{s}.example.com/simple",
        "https://host/x?page=2&access_token={s}&q=1",
        "https://b.s3.amazonaws.com/k?X-Amz-Security-Token={s}&X-Amz-Signature={s}",
        "password: -----BEGIN RSA PRIVATE KEY-----\nMII{s}\n-----END RSA PRIVATE KEY-----",
        "token ghp_{s}{s12}",
    ],
)
def test_quote_redacts_before_it_cuts(text: str) -> None:
    value = secret()
    written = text.format(s=value, s12=value[:4])
    for limit in (8, 30, 64, 1000):
        for shown in (boundary.quote(written, limit), boundary.escaped(written, limit)):
            assert not leaked(value, shown), (limit, shown)


def test_redaction_keeps_what_is_no_credential() -> None:
    text = (
        "requests>=2.31 left-pad@^1.3.0 npm:@scope/pkg@1.0 git@github.com:org/repo.git "
        "jane@example.com https://pypi.org/simple/?page=2 github.com/google/uuid@v1.6.0"
    )
    assert credentials.redact(text) == text
