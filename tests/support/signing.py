"""Signing keys for the production configuration in tests (production generates none): PEMs
made once per test run, as the environment would give them."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID


@lru_cache(maxsize=1)
def signing_settings() -> dict[str, str]:
    """CREDENTIAL_SIGNING_KEY, PDF_SIGNING_KEY and PDF_SIGNING_CERT as inline PEMs."""
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    credential = ed25519.Ed25519PrivateKey.generate()
    pdf = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Academy")])
    now = datetime.now(timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(pdf.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=30)).sign(pdf, hashes.SHA256()))
    return {"CREDENTIAL_SIGNING_KEY": credential.private_bytes(pem, pkcs8, plain).decode(),
            "PDF_SIGNING_KEY": pdf.private_bytes(pem, pkcs8, plain).decode(),
            "PDF_SIGNING_CERT": certificate.public_bytes(pem).decode()}
