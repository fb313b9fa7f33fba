"""The academy's signing keys, the public record of every key it has signed with, and the
did:web DID document that publishes the credential keys.

Keys come from the configuration (a PEM inline or a file path; development and tests generate
them into instance/). A key is recorded in `signing_keys` the first time it signs. Rotation is
a new key in the configuration: the old one stays in the table, so the DID document keeps
listing it and what it signed keeps verifying. A compromised key is withdrawn
(`flask credentials withdraw-key`): it leaves the DID document and the PDF check, and what it
signed stops verifying.

The verification method of a credential key is `<did>#<publicKeyMultibase>` (a Multikey), so
a key's id never changes and never clashes with another's.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from config import ConfigError
from models import SigningKey, db
from services.credentials import contexts
from utils.helpers import utcnow

ED25519_MULTICODEC = b"\xed\x01"  # the multicodec prefix of an Ed25519 public key
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
REGISTERED = "signing_keys_registered"  # session.info: keys known to be recorded


class KeyConfigError(ConfigError):
    """A signing key setting cannot be used (the app refuses to start, saying which)."""


# --- multibase --------------------------------------------------------------------------------

def base58btc(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, rest = divmod(number, 58)
        out = B58[rest] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def from_base58btc(text: str) -> bytes:
    number = 0
    for char in text:
        index = B58.find(char)
        if index < 0:
            raise ValueError("not base58btc")
        number = number * 58 + index
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def multibase_b58(data: bytes) -> str:
    return "z" + base58btc(data)


def from_multibase_b58(text: str) -> bytes:
    if not text.startswith("z"):
        raise ValueError("not a base58btc multibase value")
    return from_base58btc(text[1:])


def multibase_b64url(data: bytes) -> str:
    return "u" + base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def from_multibase_b64url(text: str) -> bytes:
    if not text.startswith("u"):
        raise ValueError("not a base64url multibase value")
    body = text[1:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def public_key_multibase(public_key: ed25519.Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return multibase_b58(ED25519_MULTICODEC + raw)


def ed25519_from_multibase(value: str) -> ed25519.Ed25519PublicKey | None:
    try:
        data = from_multibase_b58(value)
    except ValueError:
        return None
    if len(data) != 34 or not data.startswith(ED25519_MULTICODEC):
        return None
    return ed25519.Ed25519PublicKey.from_public_bytes(data[2:])


# --- the issuer's identifier ------------------------------------------------------------------

def did_web(base_url: str) -> str:
    """did:web for PUBLIC_BASE_URL: the host (a port percent-encoded, as the did:web method
    says) and any path as further colon-separated segments."""
    parts = urlsplit(base_url)
    host = quote(parts.netloc.lower(), safe="")
    segments = [quote(s, safe="") for s in parts.path.split("/") if s]
    return ":".join(["did:web", host, *segments])


def issuer_did() -> str:
    return did_web(current_app.config["PUBLIC_BASE_URL"])


def verification_method_id(multibase: str) -> str:
    return f"{issuer_did()}#{multibase}"


# --- reading the configured keys -------------------------------------------------------------

def _pem(setting: str, value: str | None) -> bytes:
    if not value:
        raise KeyConfigError(f"{setting} is not set")
    if value.lstrip().startswith("-----BEGIN"):
        return value.strip().encode("ascii") + b"\n"
    path = Path(value)
    if not path.is_file():
        raise KeyConfigError(f"{setting} is neither a PEM nor a readable file")
    return path.read_bytes()


@dataclass(frozen=True)
class CredentialKey:
    private_key: ed25519.Ed25519PrivateKey
    multibase: str

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)


@lru_cache(maxsize=8)
def _credential_key(pem: bytes) -> CredentialKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyConfigError("CREDENTIAL_SIGNING_KEY must be an Ed25519 private key")
    return CredentialKey(key, public_key_multibase(key.public_key()))


def credential_key() -> CredentialKey:
    """The key that signs credentials now."""
    return _credential_key(_pem("CREDENTIAL_SIGNING_KEY",
                                current_app.config["CREDENTIAL_SIGNING_KEY"]))


@dataclass(frozen=True)
class PdfKey:
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    fingerprint: str  # SHA-256 of the certificate, hex

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


@lru_cache(maxsize=8)
def _pdf_key(key_pem: bytes, cert_pem: bytes) -> PdfKey:
    # Loading an RSA key checks it (about 0.1 s): once a process, never once a signature.
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise KeyConfigError("PDF_SIGNING_KEY must be an RSA or ECDSA private key")
    certificates = x509.load_pem_x509_certificates(cert_pem)
    leaf = certificates[0]
    if leaf.public_key().public_numbers() != key.public_key().public_numbers():
        raise KeyConfigError("PDF_SIGNING_CERT does not belong to PDF_SIGNING_KEY")
    return PdfKey(key, leaf, tuple(certificates[1:]), certificate_fingerprint(leaf))


def pdf_key() -> PdfKey:
    cfg = current_app.config
    return _pdf_key(_pem("PDF_SIGNING_KEY", cfg["PDF_SIGNING_KEY"]),
                    _pem("PDF_SIGNING_CERT", cfg["PDF_SIGNING_CERT"]))


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def check_configured() -> None:
    """Load both keys now (app start): a bad setting is one clear error, not a failed
    certificate later."""
    credential_key()
    pdf_key()


# --- the public record ------------------------------------------------------------------------

def record(purpose: str, fingerprint: str, public_key: str) -> None:
    """Record a key the first time it signs (once a session: the check is one SELECT)."""
    done = db.session.info.setdefault(REGISTERED, set())
    if (purpose, fingerprint) in done:
        return
    found = db.session.scalar(select(SigningKey.id).where(
        SigningKey.purpose == purpose, SigningKey.fingerprint == fingerprint))
    if found is None:
        try:
            with db.session.begin_nested():
                db.session.add(SigningKey(purpose=purpose, fingerprint=fingerprint,
                                          public_key=public_key, first_used_at=utcnow()))
        except IntegrityError:  # recorded by a parallel request a moment earlier
            pass
    done.add((purpose, fingerprint))


def record_credential_key(key: CredentialKey) -> None:
    record("credential", key.multibase, key.multibase)


def record_pdf_key(key: PdfKey) -> None:
    record("pdf", key.fingerprint, key.certificate_pem)


def published(purpose: str) -> list[SigningKey]:
    return list(db.session.scalars(select(SigningKey).where(
        SigningKey.purpose == purpose, SigningKey.withdrawn_at.is_(None))
        .order_by(SigningKey.id)))


def withdrawn(purpose: str, fingerprint: str) -> bool:
    return db.session.scalar(select(SigningKey.id).where(
        SigningKey.purpose == purpose, SigningKey.fingerprint == fingerprint,
        SigningKey.withdrawn_at.is_not(None))) is not None


def withdraw(fingerprint: str) -> SigningKey | None:
    """Take a key out of the DID document and the PDF check (a compromised key)."""
    key = db.session.scalar(select(SigningKey).where(SigningKey.fingerprint == fingerprint))
    if key is not None and key.withdrawn_at is None:
        key.withdrawn_at = utcnow()
    return key


def credential_public_key(verification_method: str) -> ed25519.Ed25519PublicKey | None:
    """The public key a verification method names, if it is one of ours and not withdrawn:
    the signing key now, or one recorded before."""
    did = issuer_did()
    if not isinstance(verification_method, str) or not verification_method.startswith(did + "#"):
        return None
    multibase = verification_method[len(did) + 1:]
    current = credential_key()
    if multibase == current.multibase:
        return None if withdrawn("credential", multibase) else current.public_key
    known = db.session.scalar(select(SigningKey.id).where(
        SigningKey.purpose == "credential", SigningKey.fingerprint == multibase,
        SigningKey.withdrawn_at.is_(None)))
    return ed25519_from_multibase(multibase) if known is not None else None


def known_pdf_certificate(fingerprint: str) -> bool:
    if fingerprint == pdf_key().fingerprint:
        return not withdrawn("pdf", fingerprint)
    return db.session.scalar(select(SigningKey.id).where(
        SigningKey.purpose == "pdf", SigningKey.fingerprint == fingerprint,
        SigningKey.withdrawn_at.is_(None))) is not None


def did_document() -> dict:
    """The did:web document: every credential key not withdrawn, the current one included
    even before it first signs; each one may assert credentials (assertionMethod)."""
    did = issuer_did()
    current = credential_key().multibase
    keys = [k.fingerprint for k in published("credential")]
    if current not in keys and not withdrawn("credential", current):
        keys.append(current)
    methods = [{"id": f"{did}#{multibase}", "type": "Multikey", "controller": did,
                "publicKeyMultibase": multibase} for multibase in keys]
    return {
        "@context": [contexts.DID_V1, contexts.MULTIKEY_V1],
        "id": did,
        "verificationMethod": methods,
        "assertionMethod": [method["id"] for method in methods],
    }
