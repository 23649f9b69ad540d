"""Credentials in the source: found (file, line, kind), never quoted, look-alikes let through.

The fake credentials are assembled at run time (a real generated key, a JWT with the claims a
Kubernetes service-account token carries) so that this file itself holds none.
"""

from __future__ import annotations

import base64
import json
import secrets
import string
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from function import credentials
from tests.conftest import StartServer
from tests.support.fake_credentials import (
    ALNUM,
    KINDS,
    SYNTAXES,
    UPPER,
    Kind,
    kubeconfig_key_data,
    pem,
    rsa_key,
    service_account_token,
    written,
)
from tests.support.fake_credentials import random as _random


def kubeconfig() -> str:
    return (
        "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n"
        "    server: https://10.0.0.1:6443\nusers:\n- name: admin\n  user:\n"
        f"    client-certificate-data: {base64.b64encode(b'cert' * 40).decode()}\n"
        f"    client-key-data: {kubeconfig_key_data()}\n"
    )


# (kind, file name, text, line of the credential)
CREDENTIALS = [
    ("private key", "deploy_key.pem", rsa_key(), 1),
    (
        "private key",
        "helper.py",
        "'''ssh key'''\nKEY = '''"
        + pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH)
        + "'''\n",
        2,
    ),
    ("AWS access key id", "aws.py", f'ACCESS = "AKIA{_random(UPPER, 16)}"\n', 1),
    (
        "AWS secret access key",
        "config.ini",
        f"[default]\nregion = eu-west-1\naws_secret_access_key = {_random(ALNUM + '/+', 40)}\n",
        3,
    ),
    ("GitHub token", "gh.js", f'const token = "ghp_{_random(ALNUM, 36)}";\n', 1),
    (
        "GitHub token",
        "gh.go",
        f'package main\n\nvar pat = "github_pat_{_random(ALNUM, 22)}_{_random(ALNUM, 59)}"\n',
        3,
    ),
    (
        "Slack token",
        "notify.py",
        f"import os\nSLACK = 'xoxb-{_random(string.digits, 12)}-{_random(string.digits, 13)}-"
        f"{_random(ALNUM, 24)}'\n",
        2,
    ),
    (
        "Slack webhook URL",
        "notify.js",
        f'fetch("https://hooks.slack.com/services/T{_random(UPPER, 8)}/B{_random(UPPER, 10)}/'
        f'{_random(ALNUM, 24)}")\n',
        1,
    ),
    (
        "Kubernetes service-account token",
        "kube.py",
        f'import requests\n\nHEADERS = {{"Authorization": "Bearer {service_account_token()}"}}\n',
        3,
    ),
    ("kubeconfig credentials", "kubeconfig.yaml", kubeconfig(), 11),
    (
        "password in a connection string",
        "db.py",
        f'DSN = "postgresql://remediator:{_random(ALNUM, 10)}!x@db.internal:5432/app"\n',
        1,
    ),
    (
        "password in a connection string",
        "cache.go",
        f'package main\n\nconst redisURL = "redis://:{_random(ALNUM, 20)}@cache:6379/0"\n',
        3,
    ),
    (
        "high-entropy secret assignment",
        "settings.py",
        f'DEBUG = False\nAPI_KEY = "{_random(ALNUM, 32)}"\n',
        2,
    ),
    (
        "high-entropy secret assignment",
        "client.js",
        f'module.exports = {{ clientSecret: "{_random(ALNUM + "-_~", 40)}" }};\n',
        1,
    ),
]


@pytest.mark.parametrize(
    ("kind", "path", "text", "line"), CREDENTIALS, ids=[f"{c[0]}-{c[1]}" for c in CREDENTIALS]
)
def test_each_kind_of_credential_is_found_at_its_line(
    kind: str, path: str, text: str, line: int
) -> None:
    assert credentials.scan({path: text}).findings == (credentials.Finding(path, line, kind),)


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_every_kind_is_found_in_code_and_in_every_config_syntax(kind: Kind, syntax: str) -> None:
    """Each kind the README lists, written as each language and config syntax writes it:
    Python, JavaScript, Go; YAML, env file, INI, JSON, .properties (unquoted where the syntax
    allows it)."""
    value = kind.value()
    path, text, line = written(syntax, kind.name, value)
    found = credentials.scan({path: text})
    assert found.findings == (credentials.Finding(path, line, kind.kind),), text
    assert value not in repr(found)


LOOK_ALIKES = {
    "hashes.py": (
        f'EXPECTED_SHA256 = "{secrets.token_hex(32)}"\n'
        f'token_hash = "{secrets.token_hex(32)}"\n'
        f'COMMIT = "{secrets.token_hex(20)}"\n'
        f'api_key = "{secrets.token_hex(16)}"  # hex: a digest, not a key, by our rule\n'
        'integrity = "sha512-' + base64.b64encode(secrets.token_bytes(64)).decode() + '"\n'
    ),
    "ids.py": (
        'request_id = "0b1f6c5e-8a8e-4d0b-9d4e-2f6b7c1a9e30"\n'
        'auth_token = "5b0d4f0e-3f64-4c4e-9a57-0f5f0c1c7e21"\n'
        "secret_name = 'db-credentials-for-the-remediation'\n"
        "TOKEN_ENV = 'REMEDIATION_GITHUB_TOKEN_VARIABLE'\n"
    ),
    "data.py": (
        "PAYLOAD = '"
        + base64.b64encode(b"test data for the decoder, nothing secret here").decode()
        + "'\n"
        "FIXTURE = 'eyJhbGciOiJub25lIn0.bm90LWpzb24tYXQtYWxs.c2lnbmF0dXJlLXBhcnQtaGVyZQ'\n"
        "password = os.environ['DB_PASSWORD']\n"
        'password = "${DB_PASSWORD}"\n'
        "prefix = 'ghp_'\n"
    ),
    "urls.js": (
        'const a = "postgresql://app:${DB_PASSWORD}@db:5432/app";\n'
        'const b = "postgresql://app:<password>@db:5432/app";\n'
        'const c = "https://user@example.com/path";\n'
        'const e = "mysql://root:****@db/app";\n'
    ),
    "certs.yaml": (
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        "client-certificate-data: " + base64.b64encode(b"cert" * 40).decode() + "\n"
    ),
}


READS_AT_RUN_TIME = {
    # code that does what the README asks: names where the secret lives
    "secrets.py": (
        "import boto3\n\n"
        "CREDENTIALS_SECRET = 'payments-db-credentials-v2'\n"
        "TOKEN_ENDPOINT = 'https://oauth2.googleapis.com/token'\n"
        "value = boto3.client('secretsmanager').get_secret_value(\n"
        "    SecretId='arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments-db-AbCdEf'\n"
        ")\n"
        "password = os.environ['DB_PASSWORD']\n"
        "API_KEY_HEADER = 'X-Api-Key'\n"
        "secret_ref = 'projects/payments/secrets/db-password/versions/latest'\n"
        "token_type = 'urn:ietf:params:oauth:token-type:jwt'\n"
        "PASSWORD_PROMPT = 'Enter the password for the payments database'\n"
        "ERROR_INVALID_TOKEN = 'SSOProviderInvalidToken'\n"
        "auth_header = 'Access-Control-Allow-Credentials'\n"
        "tokens_type = 'list[StorageV1TokenRequest]'\n"
    ),
    "client.go": (
        'package main\n\nconst tokenURL = "https://oauth2.googleapis.com/token"\n'
        "const secretName = `payments-db-credentials-v2`\n"
        'var authKey = "userAuthPubKeyOkMsg"\n'
    ),
    "client.js": "const apiKey = process.env.API_KEY;\nconst tokenUrl = 'https://example.com/token';\n",
    # config files that reference their secrets
    "values.yaml": (
        "db:\n  password: ${DB_PASSWORD}\n  passwordFile: /run/secrets/db-password\n"
        "  existingSecret: payments-db-credentials\n  token: '{{ .Values.token }}'\n"
        "  apiKey: !vault |\n  secretName: db-credentials\n  password: changeme\n"
        "  password: <password>\n  password:\n  auth: oidc\n"
    ),
    "settings.env": "DB_PASSWORD=\nAPI_TOKEN=${API_TOKEN}\nSECRET_NAME=payments-db\nAUTH_MODE=oidc\n",
    "config.ini": "[db]\npassword = %(DB_PASSWORD)s\ntoken_file = /var/run/secrets/token\n",
    "config.json": '{"password": "", "secretArn": "arn:aws:secretsmanager:eu-west-1:1:secret:x"}\n',
    "app.properties": "db.password=${DB_PASSWORD}\ndb.passwordFile=/run/secrets/db\n",
}


def test_look_alikes_pass() -> None:
    assert not credentials.scan(LOOK_ALIKES)


@pytest.mark.parametrize("path", sorted(READS_AT_RUN_TIME))
def test_code_and_config_that_read_secrets_at_run_time_pass(path: str) -> None:
    assert credentials.scan({path: READS_AT_RUN_TIME[path]}).findings == ()


def test_the_allow_marker_lets_a_known_false_positive_through() -> None:
    line = f'DOCS_EXAMPLE = "AKIA{_random(UPPER, 16)}"'
    assert not credentials.scan({"a.py": f"{line}  # build-context: allow-secret\n"})
    assert credentials.scan({"a.py": f"{line}\n# build-context: allow-secret\n"})


def test_several_findings_are_sorted_by_file_and_line() -> None:
    key = f"AKIA{_random(UPPER, 16)}"
    found = credentials.scan({"b.py": f"x = 1\nA = '{key}'\n", "a.py": f"A = '{key}'\n"})
    assert [(f.file, f.line) for f in found.findings] == [("a.py", 1), ("b.py", 2)]


def test_refused_over_http_without_the_secret_in_reply_or_log(
    start_server: StartServer,
) -> None:
    server = start_server()
    key = f"AKIA{_random(UPPER, 16)}"
    token = service_account_token()
    reply = server.send(
        {
            "lambdaFunction": "leaky",
            "sourceCode": f'import json\n\nACCESS = "{key}"\nprint(json.dumps({{}}))\n',
            "files": {"lib/kube.py": f'TOKEN = "{token}"\n'},
        }
    )
    assert reply.type == "buildcontext.failed", reply
    assert reply.data["reason"] == "InvalidSource"
    assert reply.data["retryable"] is False
    errors = reply.data["errors"]
    assert [(e["field"], e["file"], e["line"]) for e in errors] == [
        ("files.lib/kube.py", "lib/kube.py", 1),
        ("sourceCode", "remediation.py", 3),
    ]
    assert "Kubernetes service-account token" in errors[0]["message"]
    assert "AWS access key id" in errors[1]["message"]
    assert "build-context: allow-secret" in reply.data["message"]
    for text in (json.dumps(reply.data), server.log()):
        assert key not in text and key[4:] not in text
        assert token.split(".")[2][:20] not in text and token.split(".")[1][:20] not in text
    assert list((server.workdir / "store").rglob("*.tar.gz")) == []


def test_warn_lets_it_through_and_says_where(start_server: StartServer) -> None:
    server = start_server(BUILD_CONTEXT_SECRET_SCAN="warn")
    key = f"AKIA{_random(UPPER, 16)}"
    reply = server.send({"lambdaFunction": "leaky", "sourceCode": f'ACCESS = "{key}"\n'})
    assert reply.type == "buildcontext.created", reply
    assert reply.data["secretWarnings"] == [
        {"file": "remediation.py", "line": 1, "kind": "AWS access key id"}
    ]
    warned = [r for r in server.log_lines() if r.get("message") == "credential in the source"]
    assert [(r["file"], r["line"], r["kind"]) for r in warned] == [
        ("remediation.py", 1, "AWS access key id")
    ]
    assert key not in server.log()


def test_off_does_not_scan(start_server: StartServer) -> None:
    server = start_server(BUILD_CONTEXT_SECRET_SCAN="off")
    reply = server.send(
        {"lambdaFunction": "leaky", "sourceCode": f'ACCESS = "AKIA{_random(UPPER, 16)}"\n'}
    )
    assert reply.type == "buildcontext.created", reply
    assert "secretWarnings" not in reply.data


def test_a_credential_in_a_url_dependency_is_refused_too(tmp_path: Path) -> None:
    """Dependencies reach the context through the rendered manifest: scanned there too."""
    from function.create import CreateService
    from function.errors import InvalidSource
    from function.settings import Settings
    from function.stores import open_store

    settings = Settings(fs_root=tmp_path, allow_url_dependencies=True)
    service = CreateService(settings, open_store("filesystem", settings))
    token = f"ghp_{_random(ALNUM, 36)}"
    request = {
        "lambdaFunction": "private-dep",
        "sourceCode": "import tools\n",
        "dependencies": [f"tools @ git+https://x-access-token:{token}@github.com/org/tools.git"],
    }
    with pytest.raises(InvalidSource) as refused:
        service.build(request, "req-1")
    (error,) = refused.value.errors
    assert (error.field, error.file) == ("dependencies", "requirements.txt")
    assert token not in refused.value.message and token not in error.message
    assert not service.build({**request, "dependencies": ["tools"]}, "req-2").secret_warnings
