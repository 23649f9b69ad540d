"""Sender identity: Knative Eventing's OIDC tokens (`authentication-oidc`), checked here.

A delivery carries `Authorization: Bearer <JWT>`, a ServiceAccount token the cluster issued for
the sink's audience, whose subject is the sender's identity (`system:serviceaccount:NS:NAME`;
the Trigger's and the PingSource's own ServiceAccounts). We check the signature against the
issuer's keys (OIDC discovery, then its JWKS; keys cached, re-read on an unknown key id), the
issuer, the audience, expiry and not-before; then the subject against the allow-list of the
handler the event is for (`Senders`: at the server's edge from the headers alone, then per
handler once the event type is known). Parsing and signature checks are PyJWT's.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .setting_formats import SUBJECT
from .settings import Settings
from .telemetry import redact

log = logging.getLogger("build_context.auth")

MAX_TOKEN_LENGTH = 8192
"""Longest bearer token read; a ServiceAccount token is about 1 KiB."""
ALGORITHMS = frozenset({"RS256", "ES256", "ES384", "ES512"})
"""What Kubernetes signs ServiceAccount tokens with; never `none` and never a shared secret."""
REFRESH_COOLDOWN_SECONDS = 30.0
"""An unknown key id re-reads the issuer's keys at most this often (PyJWKClient's cooldown)."""
CLOCK_SKEW_SECONDS = 30
"""Leeway on `exp` and `nbf` for clocks that disagree between nodes."""
POD_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
POD_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class KeysPending(Exception):
    """The verdict needs the issuer's keys read over the network (first use, expired cache, or
    a key id we have not seen): `verify(..., wait=False)` says so instead of waiting for them."""


class Refused(Exception):
    """A request without an acceptable identity: `status` 401 (no or bad token), 403 (a valid
    token of a sender that may not do this) or 503 (we could not read the issuer's keys)."""

    def __init__(self, status: int, reason: str, message: str, subject: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.subject = subject


@dataclass(frozen=True)
class Sender:
    """A verified token: who sent it and for which audiences."""

    subject: str
    audiences: frozenset[str]


@dataclass(frozen=True)
class HandlerPolicy:
    """Who may call one handler: the audience its tokens must be issued for and the subjects."""

    handler: str
    audience: str
    subjects: frozenset[str]

    def check(self, sender: Sender) -> None:
        if self.audience not in sender.audiences:
            raise Refused(
                403,
                "wrong_audience",
                f"the token is not issued for the {self.handler} handler: its audience must "
                f"be {self.audience!r} (BUILD_CONTEXT_AUTH_{self.handler.upper()}_AUDIENCE); "
                "set it as the Trigger's subscriber.audience or the PingSource's sink.audience",
                sender.subject,
            )
        if sender.subject not in self.subjects:
            raise Refused(
                403,
                "forbidden_subject",
                f"{redact(sender.subject, 120)} may not call the {self.handler} handler; "
                f"allowed: {', '.join(sorted(self.subjects))} "
                f"(BUILD_CONTEXT_AUTH_{self.handler.upper()}_SUBJECTS)",
                sender.subject,
            )


def subjects(setting: str, namespace: str) -> frozenset[str]:
    """`a, system:serviceaccount:ns:b` -> full subjects; a bare name is in our own namespace."""
    out = set()
    for item in (part.strip() for part in setting.split(",")):
        if item:
            out.add(item if ":" in item else f"system:serviceaccount:{namespace}:{item}")
    return frozenset(out)


def policies(settings: Settings) -> dict[str, HandlerPolicy]:
    namespace = settings.home_namespace
    return {
        "create": HandlerPolicy(
            "create",
            settings.auth_create_audience,
            subjects(settings.auth_create_subjects, namespace),
        ),
        "cleanup": HandlerPolicy(
            "cleanup",
            settings.auth_cleanup_audience,
            subjects(settings.auth_cleanup_subjects, namespace),
        ),
    }


def is_open(path: str) -> bool:
    """The probes and the scrape need no sender (and carry no body)."""
    return path.startswith("/health/") or path == "/metrics"


class Senders:
    """Who may send what, with BUILD_CONTEXT_AUTH=oidc: every request but the open paths must
    carry a valid token of a sender that some handler of this instance allows."""

    def __init__(self, settings: Settings) -> None:
        self.verifier = TokenVerifier(settings)
        self.policies = {h: p for h, p in policies(settings).items() if settings.handles(h)}

    def admit(self, path: str, authorization: str | None, *, wait: bool = True) -> Sender | None:
        """The sender of a request, from its headers alone: a valid token whose subject some
        handler allows for the token's audience (`check` then holds it to the handler of the
        event). None on the open paths. Raises Refused; with `wait` False, KeysPending rather
        than waiting for the issuer's keys."""
        if is_open(path):
            return None
        sender = self.verifier.verify(authorization, wait=wait)
        meant = [p for p in self.policies.values() if p.audience in sender.audiences]
        if not any(sender.subject in policy.subjects for policy in meant):
            for policy in meant:
                policy.check(sender)  # raises: forbidden_subject
        return sender

    def check(self, handler: str, sender: Sender | None) -> None:
        """Whether `sender` (admitted at the edge) may call `handler`; raises Refused."""
        if sender is None:
            raise Refused(401, "missing_token", "no verified sender for this request")
        self.policies[handler].check(sender)


class _IssuerKeys(jwt.PyJWKClient):
    """PyJWT's JWKS client (cache, refresh on an unknown `kid`), presenting our own
    ServiceAccount token on each fetch: the apiserver serves its keys to service accounts, and
    the projected token file is rotated under us."""

    def __init__(self, uri: str, token_file: Path | None, context: ssl.SSLContext, lifespan: float):
        super().__init__(
            uri,
            lifespan=lifespan,
            timeout=10,
            ssl_context=context,
            cooldown_duration=REFRESH_COOLDOWN_SECONDS,
        )
        self.token_file = token_file
        self.fetched_at: float | None = None

    def fetch_data(self) -> Any:
        if _NO_WAITING.active:
            raise KeysPending
        self.headers = _bearer(self.token_file)
        data = super().fetch_data()
        self.fetched_at = time.monotonic()
        return data

    def cached_key(self, kid: str) -> jwt.PyJWK | None:
        """`get_signing_key` without the network and without its lock (which a fetch holds):
        None for a key id the issuer does not have and the cooldown keeps us from asking about
        again (as `get_signing_key` decides); KeysPending when the keys must be fetched."""
        _NO_WAITING.active = True
        try:
            key = self.match_kid(self.get_signing_keys(), kid)
        finally:
            _NO_WAITING.active = False
        fetched = self.fetched_at
        if key is None and (
            fetched is None or time.monotonic() - fetched >= self.cooldown_duration
        ):
            raise KeysPending
        return key


class _NoWaiting(threading.local):
    active = False


_NO_WAITING = _NoWaiting()
"""Set on a thread that must not wait for the network (the server's event loop)."""


def _bearer(token_file: Path | None) -> dict[str, str]:
    if token_file is None:
        return {}
    return {"Authorization": f"Bearer {token_file.read_text().strip()}"}


class TokenVerifier:
    """Verifies bearer tokens of one issuer for the audiences of this instance's handlers."""

    def __init__(self, settings: Settings) -> None:
        self.issuer = settings.auth_issuer
        self.discovery_url = (
            settings.auth_discovery_url
            or self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        )
        ca = settings.auth_ca_file or (str(POD_CA) if POD_CA.exists() else "")
        self.context = ssl.create_default_context(cafile=ca or None)
        token = settings.auth_token_file or (str(POD_TOKEN) if POD_TOKEN.exists() else "")
        self.token_file = Path(token) if token else None
        self.lifespan = settings.auth_keys_refresh_seconds
        self.audiences = sorted(
            {p.audience for h, p in policies(settings).items() if settings.handles(h)}
        )
        self._keys: _IssuerKeys | None = None
        self._lock = threading.Lock()

    def keys(self) -> _IssuerKeys:
        """The issuer's JWKS client, from OIDC discovery on first use (again after a failure)."""
        with self._lock:
            if self._keys is None:
                request = urllib.request.Request(
                    self.discovery_url, headers=_bearer(self.token_file)
                )
                opener = urllib.request.build_opener(
                    urllib.request.HTTPSHandler(context=self.context)
                )
                with opener.open(request, timeout=10) as response:
                    document = json.load(response)
                if not isinstance(document, dict) or document.get("issuer") != self.issuer:
                    raise ValueError(
                        f"{self.discovery_url} names issuer {document.get('issuer')!r} "
                        f"(not {self.issuer!r})"
                        if isinstance(document, dict)
                        else f"{self.discovery_url} is not an OIDC discovery document"
                    )
                self._keys = _IssuerKeys(
                    str(document["jwks_uri"]), self.token_file, self.context, self.lifespan
                )
            return self._keys

    def verify(self, authorization: str | None, *, wait: bool = True) -> Sender:
        """The sender of a valid token; raises Refused. With `wait` False it never waits for the
        network: KeysPending when the keys must be read first (only the cached-key path, CPU
        only, runs)."""
        token = _bearer_token(authorization)
        algorithm, kid = _signed_with(token)
        claims = self._claims(token, self._signing_key(kid, wait), algorithm)
        subject = claims["sub"]
        if not isinstance(subject, str) or not SUBJECT.fullmatch(subject):
            raise _invalid("the token's subject is not a ServiceAccount")
        audience = claims["aud"]
        audiences = frozenset([audience] if isinstance(audience, str) else audience)
        return Sender(subject, audiences)

    def _claims(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        """The token's claims once its signature, issuer, audience and times hold."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audiences,
                issuer=self.issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid(
                "the token has expired: the sender must request a new one", "expired_token"
            ) from None
        except jwt.ImmatureSignatureError:
            raise _invalid("the token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise _invalid(
                f"the token is not issued for this function: its audience must be one of "
                f"{', '.join(self.audiences)}",
                "wrong_audience",
            ) from None
        except jwt.InvalidIssuerError:
            raise _invalid(f"the token is not issued by {self.issuer}") from None
        except jwt.InvalidTokenError as error:
            raise _invalid(f"the token is not valid: {redact(str(error), 120)}") from None
        return claims

    def _signing_key(self, kid: str, wait: bool) -> jwt.PyJWK:
        if not wait:
            if self._keys is None:
                raise KeysPending
            try:
                known = self._keys.cached_key(kid)
            except jwt.PyJWKClientError:  # the cached set holds no signing key at all
                known = None
            if known is None:
                raise _invalid(_UNKNOWN_KEY)
            return known
        try:
            keys = self.keys()
        except (OSError, ValueError, KeyError) as error:
            log.error(
                "issuer keys unavailable",
                extra={"discoveryUrl": self.discovery_url, "cause": redact(str(error), 300)},
            )
            raise Refused(
                503,
                "keys_unavailable",
                f"cannot read the token issuer's keys from {self.discovery_url}; retry later",
            ) from None
        try:
            return keys.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as error:
            log.error(
                "issuer keys unavailable",
                extra={"jwksUri": keys.uri, "cause": redact(str(error), 300)},
            )
            raise Refused(
                503, "keys_unavailable", "cannot read the token issuer's keys; retry later"
            ) from None
        except jwt.PyJWKClientError:
            raise _invalid(_UNKNOWN_KEY) from None


_UNKNOWN_KEY = "the token is signed with a key the cluster's issuer does not have"


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Refused(
            401,
            "missing_token",
            "no Authorization header: this function takes events only from Knative Eventing "
            "with sender identity (authentication-oidc) on; `python -m function send` takes "
            "--token-file or --token-for",
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _invalid("the Authorization header must be `Bearer <token>`")
    if len(token) > MAX_TOKEN_LENGTH:
        raise _invalid(f"the bearer token is longer than {MAX_TOKEN_LENGTH} characters")
    return token


def _signed_with(token: str) -> tuple[str, str]:
    """The algorithm and key id the token's header names, if we accept them."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise _invalid("the bearer token is not a JWT") from None
    algorithm, kid = header.get("alg"), header.get("kid")
    if algorithm not in ALGORITHMS:
        raise _invalid(
            f"token algorithm {redact(str(algorithm), 20)!r} is not accepted; "
            f"a ServiceAccount token is signed with one of {', '.join(sorted(ALGORITHMS))}"
        )
    if not isinstance(kid, str) or not kid or len(kid) > 128:
        raise _invalid("the token has no key id (kid) of the cluster's issuer")
    return algorithm, kid


def _invalid(message: str, reason: str = "invalid_token") -> Refused:
    return Refused(401, reason, message)
