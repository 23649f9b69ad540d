"""Fake credentials assembled at run time (a real generated key, a JWT with the claims a
Kubernetes service-account token carries, random tokens of each provider's shape), so that no
file of the repository holds one; and the syntaxes they are written in."""

from __future__ import annotations

import base64
import json
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ALNUM = string.ascii_letters + string.digits
UPPER = string.ascii_uppercase + string.digits


def random(alphabet: str, size: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(size))


def b64url(data: Mapping[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def service_account_token() -> str:
    header = {"alg": "RS256", "kid": random(ALNUM, 43)}
    payload = {
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "exp": 1798761600,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "kubernetes.io": {
            "namespace": "remediation",
            "serviceaccount": {"name": "builder", "uid": "5b0d4f0e-3f64-4c4e-9a57-0f5f0c1c7e21"},
        },
        "sub": "system:serviceaccount:remediation:builder",
    }
    signature = base64.urlsafe_b64encode(secrets.token_bytes(256)).rstrip(b"=").decode()
    return f"{b64url(header)}.{b64url(payload)}.{signature}"


def jwt() -> str:
    header, payload = {"alg": "HS256", "typ": "JWT"}, {"sub": "agent", "iat": 1700000000}
    return f"{b64url(header)}.{b64url(payload)}.{random(ALNUM + '-_', 43)}"


def pem(key: object, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.PEM, fmt, serialization.NoEncryption()
    ).decode()


def rsa_key() -> str:
    return pem(
        rsa.generate_private_key(65537, 2048), serialization.PrivateFormat.TraditionalOpenSSL
    )


def kubeconfig_key_data() -> str:
    key = pem(ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8)
    return base64.b64encode(key.encode()).decode()


@dataclass(frozen=True)
class Kind:
    """A kind of credential the README lists: the name it is usually assigned to, and a new
    value of its shape."""

    kind: str
    name: str
    value: Callable[[], str]


KINDS = [
    Kind("private key", "TLS_KEY", rsa_key),
    Kind("AWS access key id", "AWS_ACCESS_KEY_ID", lambda: f"AKIA{random(UPPER, 16)}"),
    Kind("AWS secret access key", "aws_secret_access_key", lambda: random(ALNUM + "/+", 40)),
    Kind("Google API key", "MAPS", lambda: f"AIza{random(ALNUM + '_-', 35)}"),
    Kind("GitHub token", "GH", lambda: f"ghp_{random(ALNUM, 36)}"),
    Kind(
        "Slack token",
        "SLACK",
        lambda: f"xoxb-{random(string.digits, 12)}-{random(string.digits, 13)}-{random(ALNUM, 24)}",
    ),
    Kind(
        "Slack webhook URL",
        "NOTIFY",
        lambda: (
            f"https://hooks.slack.com/services/T{random(UPPER, 8)}/B{random(UPPER, 10)}/"
            f"{random(ALNUM, 24)}"
        ),
    ),
    Kind("JSON Web Token", "SESSION", jwt),
    Kind("Kubernetes service-account token", "KUBE", service_account_token),
    Kind("kubeconfig credentials", "client-key-data", kubeconfig_key_data),
    Kind(
        "password in a connection string",
        "DATABASE_URL",
        lambda: f"postgresql://remediator:{random(ALNUM, 16)}@db.internal:5432/app",
    ),
    Kind("high-entropy secret assignment", "api_key", lambda: random(ALNUM, 32)),
    Kind("password assignment", "db_password", lambda: f"{random(ALNUM, 10)}!x9Q"),
]


def _indented(value: str, prefix: str, joiner: str = "\n") -> str:
    return joiner.join(
        line if i == 0 else prefix + line for i, line in enumerate(value.splitlines())
    )


def _quoted(value: str, multi: str, single: str) -> str:
    quote = multi if "\n" in value else single
    return f"{quote}{value}{quote}"


# syntax -> (file name, writer of `name = value`, line of the credential in what it writes)
SYNTAXES: dict[str, tuple[str, Callable[[str, str], str], int]] = {
    "python": ("settings.py", lambda n, v: f'import os\n\nCONFIG = {{"{n}": {_quoted(v, chr(34) * 3, chr(34))}}}\n', 3),
    "javascript": ("settings.js", lambda n, v: f"const config = {{\n  '{n}': {_quoted(v, '`', chr(39))},\n}};\n", 2),
    "go": ("settings.go", lambda n, v: f'package main\n\nvar config = map[string]string{{"{n}": {_quoted(v, "`", chr(34))}}}\n', 3),
    "yaml": ("config.yaml", lambda n, v: f"app:\n  {n}: |-\n    {_indented(v, '    ')}\n" if "\n" in v else f"app:\n  region: eu-west-1\n  {n}: {v}\n", 3),
    "env": ("settings.env", lambda n, v: f"# the service\nREGION=eu-west-1\n{n}={_quoted(v, chr(34), '')}\n", 3),
    "ini": ("config.ini", lambda n, v: f"[default]\nregion = eu-west-1\n{n} = {_indented(v, '    ')}\n", 3),
    "json": ("config.json", lambda n, v: f'{{\n  "region": "eu-west-1",\n  {json.dumps(n)}: {json.dumps(v)}\n}}\n', 3),
    "properties": ("application.properties", lambda n, v: f"# the service\n{n}={_indented(v, '  ', chr(92) + 'n' + chr(92) + chr(10))}\n", 2),
}  # fmt: skip


def written(syntax: str, name: str, value: str) -> tuple[str, str, int]:
    """(path, text, line of the credential) of `name = value` in that syntax."""
    path, write, line = SYNTAXES[syntax]
    return path, write(name, value), line
