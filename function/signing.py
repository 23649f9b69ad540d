"""The operator's keys for provenance: Ed25519 or ECDSA P-256, signing and verifying, and the
key id that names a key in a DSSE envelope."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .errors import ConfigurationError
from .refusals import UnusableInput, VerificationFailed

__all__ = ["UnusableInput", "VerificationFailed"]


PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def keyid(public_key: PublicKey) -> str:
    """sha256 hex of the DER SubjectPublicKeyInfo: `openssl pkey -pubin -outform DER | sha256sum`."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _kind(key: object) -> str | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "ecdsa-sha2-nistp256"
    return None


@dataclass(frozen=True)
class SigningKey:
    private_key: PrivateKey
    keyid: str

    @classmethod
    def load(cls, path: Path, variable: str = "BUILD_CONTEXT_SIGNING_KEY_FILE") -> SigningKey:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ConfigurationError(
                variable, f"cannot read {path}: {error.strerror}", "Mount the key Secret there."
            ) from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigurationError(
                variable,
                f"{path} is not an unencrypted PEM private key",
                "Create one with `openssl genpkey -algorithm ed25519 -out key.pem` (docs/deploy.md).",
            ) from None
        if _kind(key) is None or not isinstance(
            key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
        ):
            raise ConfigurationError(
                variable,
                f"{path} holds a {type(key).__name__}; only Ed25519 and ECDSA P-256 keys sign",
                "Create an Ed25519 key: `openssl genpkey -algorithm ed25519 -out key.pem`.",
            )
        return cls(key, keyid(key.public_key()))

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(data)
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))


@dataclass(frozen=True)
class VerifyingKey:
    public_key: PublicKey
    keyid: str

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyingKey:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise UnusableInput("the public key is not a PEM public key") from None
        if _kind(key) is None or not isinstance(
            key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
        ):
            raise UnusableInput("the public key is neither Ed25519 nor ECDSA P-256")
        return cls(key, keyid(key))

    def verifies(self, signature: bytes, data: bytes) -> bool:
        try:
            if isinstance(self.public_key, ed25519.Ed25519PublicKey):
                self.public_key.verify(signature, data)
            else:
                self.public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def load_public_keys(paths: Sequence[Path]) -> list[VerifyingKey]:
    """PEM public keys from files, or from every file of a folder (a mounted ConfigMap of the
    keys in rotation; its `..data` links and hidden files are skipped)."""
    files = [
        file
        for path in paths
        for file in (
            sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if path.is_dir()
            else [path]
        )
    ]
    return [VerifyingKey.from_pem(file.read_bytes()) for file in files]
