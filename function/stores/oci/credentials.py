"""Registry credentials as Kubernetes pull secrets and docker config.json files hold them."""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ...errors import ConfigurationError
from ...settings import Settings


@dataclass(frozen=True)
class Credentials:
    """From a docker config: a user and password, an identity (refresh) token, or a bearer."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""


_SETTING = "BUILD_CONTEXT_OCI_DOCKER_CONFIG"


def registry_key(text: str) -> str:
    """`https://r.example.com/v1/` and `r.example.com` name the same registry in a config."""
    if "://" not in text:
        text = "//" + text
    return urlsplit(text).netloc.lower()


def credentials_from_docker_config(path: Path, registry: str) -> Credentials | None:
    """The entry for `registry` in a docker config.json (`auths`), as pull secrets hold it."""
    for key, entry in _auths(path).items():
        if isinstance(entry, dict) and registry_key(str(key)) == registry.lower():
            return _credentials(path, str(key), entry)
    return None


def _auths(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise ConfigurationError(_SETTING, f"cannot read {path}: {error.strerror}") from None
    except ValueError:
        raise ConfigurationError(_SETTING, f"{path} is not JSON") from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        raise ConfigurationError(
            _SETTING, f"{path} has no `auths` object", "Give a docker config.json."
        )
    return auths


def _credentials(path: Path, key: str, entry: dict[str, object]) -> Credentials:
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigurationError(
                _SETTING, f"{path}: the `auth` of {key[:80]!r} is not base64 of user:password"
            ) from None
        username, _, password = decoded.partition(":")
    return Credentials(
        username=username,
        password=password,
        identity_token=str(entry.get("identitytoken") or ""),
        registry_token=str(entry.get("registrytoken") or ""),
    )


def configured_ca_file(path: str) -> str:
    """A CA bundle that cannot be read stops start-up, rather than failing every request."""
    if path:
        try:
            ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError) as error:
            raise ConfigurationError(
                "BUILD_CONTEXT_OCI_CA_FILE",
                f"cannot load CA certificates from {path[:200]}: {error}",
                "Mount the registry's CA bundle (PEM) there, or leave it empty for the system's.",
            ) from None
    return path


def configured_credentials(settings: Settings) -> Credentials | None:
    path = settings.oci_docker_config
    if not path:
        folder = os.environ.get("DOCKER_CONFIG", "")
        default = Path(folder) / "config.json" if folder else None
        if default is None or not default.exists():
            return None
        path = str(default)
    return credentials_from_docker_config(Path(path), settings.oci_registry)
