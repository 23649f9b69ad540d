"""A small client of the OCI distribution API (what every registry speaks), over `requests`.

Only what the OCI store needs: blobs (check, upload in one PUT, read), manifests (read, put,
delete by digest), tag and repository listing with `Link` pagination, and the two auth schemes
registries use: Basic, and Bearer tokens from the realm a `WWW-Authenticate` challenge names
(with the docker config's user and password, identity token or registry token). docs/oci.md
says why this is plain HTTP rather than oras.

Errors are classified once, here: `Unavailable` (connection, timeout, 429, 5xx: retried by the
caller's policy), `Denied` (401 after authenticating, 403), `Missing` (404) and `Refused`
(any other 4xx: the registry rejected what we sent). Nothing of a response is trusted beyond
its status: digests are recomputed, and pagination links may only name a path on our registry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from .credentials import Credentials, credentials_from_docker_config, registry_key

__all__ = ["Credentials", "credentials_from_docker_config", "registry_key"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT_MANIFESTS = ", ".join(
    (
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""The distribution spec's limit on what a registry must accept; we never read more."""
MAX_CHALLENGE_CHARS = 2048
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]{0,1024})"')
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class RegistryError(Exception):
    def __init__(self, message: str, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class Unavailable(RegistryError):
    """Transient: the registry was not reachable, timed out, throttled us or failed inside."""


class Denied(RegistryError):
    """The registry refused our credentials or this operation (401 after auth, 403)."""


class Missing(RegistryError):
    """404: no such repository, manifest or blob."""


class Refused(RegistryError):
    """Another 4xx: the registry did not accept what we sent (413: too large)."""


@dataclass
class _Token:
    header: str
    expires: float


class RegistryClient:
    """One per store; thread-safe (a `requests.Session` with a pooled adapter)."""

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        insecure_http: bool = False,
        ca_file: str = "",
        timeout: float = 20.0,
        pool_size: int = 16,
    ) -> None:
        self.registry = registry
        self.base = f"{'http' if insecure_http else 'https'}://{registry}"
        self.credentials = credentials
        self.insecure_http = insecure_http
        self.timeout = (min(5.0, timeout), timeout)
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = ca_file or True
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = "build-context"
        self._lock = threading.Lock()
        self._basic = False
        self._tokens: dict[str, _Token] = {}

    def close(self) -> None:
        self.session.close()

    # --- requests with auth ----------------------------------------------------------------

    def _auth_header(self, scope: str) -> str | None:
        with self._lock:
            if self._basic and self.credentials is not None:
                user = f"{self.credentials.username}:{self.credentials.password}".encode()
                return "Basic " + base64.b64encode(user).decode()
            token = self._tokens.get(scope)
            if token is not None and token.expires > time.monotonic():
                return token.header
        return None

    def request(
        self,
        method: str,
        path: str,
        scope: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One call; answers 2xx (and 3xx never: redirects are followed) or raises classified."""
        url = path if path.startswith(self.base + "/") else self.base + path
        for attempt in (1, 2):
            sent = dict(headers or {})
            if (auth := self._auth_header(scope)) is not None:
                sent["Authorization"] = auth
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=sent,
                    data=data,
                    params=params,
                    timeout=self.timeout,
                    stream=stream,
                )
            except requests.exceptions.SSLError as error:
                raise Denied(
                    f"TLS with {self.registry} failed ({str(error)[:160]}): give its CA in "
                    "BUILD_CONTEXT_OCI_CA_FILE, or set BUILD_CONTEXT_OCI_INSECURE_HTTP=true if "
                    "it serves plain HTTP only"
                ) from None
            except requests.RequestException as error:  # connection, timeout, broken reply
                raise Unavailable(f"{self.registry} not reachable: {str(error)[:200]}") from None
            if response.status_code == 401 and attempt == 1:
                challenge = response.headers.get("WWW-Authenticate", "")
                response.close()
                self._authenticate(challenge, scope)
                continue
            if response.status_code < 300:
                return response
            raise _classified(response, method, path)
        raise AssertionError("unreachable")  # pragma: no cover

    def _authenticate(self, challenge: str, scope: str) -> None:
        """Answer a 401's challenge: Basic from now on, or a Bearer token for `scope`."""
        scheme, _, rest = challenge[:MAX_CHALLENGE_CHARS].partition(" ")
        if self.credentials is None and scheme.lower() != "bearer":
            raise Denied(
                f"{self.registry} wants credentials and none are configured; mount a pull "
                "secret and set BUILD_CONTEXT_OCI_DOCKER_CONFIG",
                401,
            )
        if scheme.lower() == "basic":
            with self._lock:
                self._basic = True
            return
        if scheme.lower() != "bearer":
            raise Denied(f"{self.registry} asks for an unknown auth scheme {scheme[:40]!r}", 401)
        if self.credentials is not None and self.credentials.registry_token:
            token = _Token("Bearer " + self.credentials.registry_token, time.monotonic() + 3600)
        else:
            token = self._fetch_token(dict(_CHALLENGE_PARAM.findall(rest)), scope)
        with self._lock:
            self._tokens[scope] = token

    def _fetch_token(self, challenge: dict[str, str], scope: str) -> _Token:
        """A token from the realm the challenge names (https only, unless plain HTTP is on)."""
        realm = challenge.get("realm", "")
        realm_scheme = urlsplit(realm).scheme
        if realm_scheme != "https" and not (self.insecure_http and realm_scheme == "http"):
            raise Denied(f"{self.registry} names a token realm that is not https: {realm[:80]!r}")
        query = {"service": challenge.get("service", ""), "scope": scope}
        try:
            reply = self._ask_token_service(realm, query)
        except requests.RequestException as error:
            raise Unavailable(
                f"token service {realm[:80]} not reachable: {str(error)[:200]}"
            ) from None
        if reply.status_code in (401, 403):
            raise Denied(f"the token service of {self.registry} refused our credentials", 401)
        if reply.status_code >= 300:
            raise _classified(reply, "GET", "token")
        try:
            body = reply.json()
            value = str(body.get("token") or body.get("access_token"))
            lifetime = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError):
            raise Unavailable(f"the token service of {self.registry} sent no token") from None
        return _Token("Bearer " + value, time.monotonic() + max(10.0, lifetime - 10.0))

    def _ask_token_service(self, realm: str, query: dict[str, str]) -> requests.Response:
        """An identity token is exchanged (OAuth2 refresh grant); a user and password, or
        nothing, are sent to the realm as they are (the docker token protocol)."""
        credentials = self.credentials
        if credentials is not None and credentials.identity_token:
            grant = {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": "build-context",
            }
            return self.session.post(realm, data={**query, **grant}, timeout=self.timeout)
        auth = None
        if credentials is not None and credentials.username:
            auth = (credentials.username, credentials.password)
        return self.session.get(realm, params=query, auth=auth, timeout=self.timeout)

    # --- the API ---------------------------------------------------------------------------

    def check(self) -> None:
        self.request("GET", "/v2/", "registry:catalog:*").close()

    def has_blob(self, repository: str, digest: str) -> bool:
        try:
            self.request("HEAD", f"/v2/{repository}/blobs/{digest}", _scope(repository)).close()
        except Missing:
            return False
        return True

    def upload_blob(self, repository: str, digest: str, data: bytes) -> None:
        """A monolithic upload: POST for a session, then one PUT with the bytes and digest."""
        scope = _scope(repository)
        started = self.request("POST", f"/v2/{repository}/blobs/uploads/", scope)
        started.close()
        location = started.headers.get("Location", "")
        target = self._same_registry(urljoin(started.url, location))
        separator = "&" if "?" in target else "?"
        self.request(
            "PUT",
            target + separator + urlencode({"digest": digest}),
            scope,
            headers={"Content-Type": "application/octet-stream"},
            data=data,
        ).close()

    def get_blob(self, repository: str, digest: str, limit: int) -> bytes:
        response = self.request("GET", f"/v2/{repository}/blobs/{digest}", _scope(repository))
        data = _read_bounded(response, limit)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise Unavailable(f"blob {digest} of {repository} came back with other bytes")
        return data

    def _manifest_request(
        self, method: str, repository: str, reference: str
    ) -> requests.Response | None:
        """A manifest by tag or digest, in any media type we read (a GET streamed: the caller
        bounds what it reads); None when absent. A HEAD is not streamed: closing a response
        whose body was not read closes its connection, and the next call pays a new one."""
        try:
            return self.request(
                method,
                f"/v2/{repository}/manifests/{reference}",
                _scope(repository),
                headers={"Accept": ACCEPT_MANIFESTS},
                stream=method == "GET",
            )
        except Missing:
            return None

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str] | None:
        """(bytes, digest) of a manifest by tag or digest; None when absent."""
        response = self._manifest_request("GET", repository, reference)
        if response is None:
            return None
        data = _read_bounded(response, MAX_MANIFEST_BYTES)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise Unavailable(f"manifest {reference} of {repository} came back with other bytes")
        return data, digest

    def head_manifest(self, repository: str, reference: str) -> str | None:
        """The digest a tag points at (Docker-Content-Digest); None when absent."""
        response = self._manifest_request("HEAD", repository, reference)
        if response is None:
            return None
        response.close()
        digest = response.headers.get("Docker-Content-Digest", "")
        if DIGEST.fullmatch(digest):
            return digest
        found = self.get_manifest(repository, reference)
        return None if found is None else found[1]

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> None:
        self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            _scope(repository),
            headers={"Content-Type": media_type},
            data=body,
        ).close()

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """False when it was already gone."""
        try:
            self.request(
                "DELETE", f"/v2/{repository}/manifests/{digest}", _scope(repository)
            ).close()
        except Missing:
            return False
        return True

    def tags(self, repository: str, page_size: int) -> Iterator[str]:
        try:
            for page in self._pages(f"/v2/{repository}/tags/list", _scope(repository), page_size):
                yield from page.get("tags") or []
        except Missing:
            return

    def repositories(self, page_size: int, after: str = "") -> Iterator[str]:
        yield from (
            name
            for page in self._pages("/v2/_catalog", "registry:catalog:*", page_size, after)
            for name in page.get("repositories") or []
        )

    def _pages(
        self, path: str, scope: str, page_size: int, after: str = ""
    ) -> Iterator[dict[str, Any]]:
        params: dict[str, str] | None = {"n": str(page_size)}
        if after and params is not None:
            params["last"] = after
        url = path
        while True:
            response = self.request("GET", url, scope, params=params, stream=True)
            body = json.loads(_read_bounded(response, MAX_MANIFEST_BYTES))
            if not isinstance(body, dict):
                raise Unavailable(f"{path} answered something that is not a JSON object")
            yield body
            following = response.links.get("next", {}).get("url")
            if not following:
                return
            url = self._same_registry(urljoin(response.url, following))
            params = None

    def _same_registry(self, url: str) -> str:
        """Upload locations and page links may only point back at the registry itself."""
        parts = urlsplit(url)
        if parts.netloc.lower() != self.registry.lower():
            # Some registries hand out upload URLs on another host (a CDN, S3); we do not
            # follow them with our credentials.
            raise Refused(f"{self.registry} sent us to another host {parts.netloc[:80]!r}")
        return self.base + parts.path + (f"?{parts.query}" if parts.query else "")


def _scope(repository: str) -> str:
    return f"repository:{repository}:pull,push,delete"


def _read_bounded(response: requests.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise Refused(f"a registry response is larger than {limit} bytes")
            chunks.append(chunk)
    except requests.RequestException as error:
        raise Unavailable(f"reading from the registry failed: {str(error)[:200]}") from None
    finally:
        response.close()
    return b"".join(chunks)


def _classified(response: requests.Response, method: str, path: str) -> RegistryError:
    status = response.status_code
    code = ""
    detail = ""
    try:
        errors = json.loads(response.content[:65536] or b"{}").get("errors") or []
        if errors and isinstance(errors[0], dict):
            code = str(errors[0].get("code", ""))[:64]
            detail = str(errors[0].get("message", ""))[:200]
    except (ValueError, AttributeError):
        pass
    finally:
        response.close()
    message = f"{method} {path[:200]}: HTTP {status} {code} {detail}".strip()
    if status in (429, 408) or status >= 500:
        return Unavailable(message, status, code)
    if status in (401, 403):
        return Denied(message, status, code)
    if status == 404:
        return Missing(message, status, code)
    return Refused(message, status, code)
