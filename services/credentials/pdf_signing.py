"""The certificate PDF as the academy signs it: the credential attached as a file, and a PAdES
signature (pyHanko) that a PDF reader shows as the academy's and that breaks if a byte
changes. `check()` is the other side: is this PDF signed by a key of ours, untouched, and what
credential does it carry?

Signing is deterministic: the signing time (and the document's modification date) is the one
recorded on the certificate, the document ID is derived from the content, and the signature
has no randomness (ECDSA with RFC 6979 nonces, or RSA PKCS #1 v1.5), so a lost file is
rendered and signed again byte for byte (with the same key).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning

# pyHanko imports cryptography's DSA names, which cryptography marks deprecated at import: a
# warning on every process start (and in front of the one-line start-up errors) about an
# algorithm we never use.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
    from pyhanko.pdf_utils import embed, generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.pdf_utils.metadata.model import DocumentMetadata
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign import fields, signers
    from pyhanko.sign.general import SigningError
    from pyhanko.sign.signers.pdf_signer import PdfSignatureMetadata
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko.sign.validation.status import SignatureCoverageLevel
    from pyhanko_certvalidator import ValidationContext
    from pyhanko_certvalidator.registry import SimpleCertificateStore

from services.credentials import keys

log = logging.getLogger("lms.credentials")

FIELD = "AcademySignature"
ATTACHMENT_SUFFIX = ".credential.json"
HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}


class _Signer(signers.SimpleSigner):
    """SimpleSigner with the private key loaded once (pyHanko loads it again for every
    signature: 0.1 s for an RSA key, most of a signature's cost)."""

    def __init__(self, key: keys.PdfKey):
        der = key.private_key.private_bytes(serialization.Encoding.DER,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
        chain = [asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
                 for c in key.chain]
        super().__init__(
            signing_cert=asn1_x509.Certificate.load(
                key.certificate.public_bytes(serialization.Encoding.DER)),
            signing_key=asn1_keys.PrivateKeyInfo.load(der),
            cert_registry=SimpleCertificateStore.from_certs(chain))
        self._key = key.private_key

    def sign_raw(self, data: bytes, digest_algorithm: str) -> bytes:
        algorithm = HASHES[digest_algorithm.lower()]
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(data, padding.PKCS1v15(), algorithm)
        # RFC 6979: the same data gives the same signature, as with RSA PKCS #1 v1.5.
        return self._key.sign(data, ec.ECDSA(algorithm, deterministic_signing=True))


class _PinnedMetadata(DocumentMetadata):
    """Document metadata whose modification date stays the signing time: pyHanko sets it to
    the clock just before writing (the info dictionary and the XMP packet)."""

    def __setattr__(self, name, value):
        if name == "last_modified" and self.__dict__.get("pinned") is not None:
            value = self.__dict__["pinned"]
        super().__setattr__(name, value)


class _Writer(IncrementalPdfFileWriter):
    def pin_modification_time(self, when: datetime) -> None:
        current = self._meta
        pinned = _PinnedMetadata(**{f.name: getattr(current, f.name)
                                    for f in dataclasses.fields(current)})
        pinned.__dict__["pinned"] = when
        pinned.last_modified = when
        self._meta = pinned

    @classmethod
    def _handle_id(cls, prev):
        # pyHanko gives the signed revision a random second ID; derive it from the content
        # instead, so signing the same bytes gives the same file.
        first, _ = super()._handle_id(prev)
        stream = prev.stream
        seed = stream.getvalue() if isinstance(stream, io.BytesIO) else b""
        return generic.ArrayObject([first, generic.ByteStringObject(
            hashlib.sha256(b"id2" + seed).digest()[:16])])


class _PdfSigner(signers.PdfSigner):
    def __init__(self, *args, signing_time: datetime, **kwargs):
        super().__init__(*args, **kwargs)
        self._signing_time = signing_time

    def init_signing_session(self, pdf_out, existing_fields_only=False):
        session = super().init_signing_session(pdf_out, existing_fields_only)
        session.system_time = self._signing_time  # the certificate's, not the clock's
        return session


_signers: dict[str, tuple[_Signer, int]] = {}


def _signer(key: keys.PdfKey) -> tuple[_Signer, int]:
    """The signer of `key` and the room its signature takes in the file (hex digits: twice
    the bytes of the certificates, one signature and the signed attributes, whose size is
    fixed for a key), so pyHanko skips its trial signature."""
    found = _signers.get(key.fingerprint)
    if found is None:
        size = sum(len(c.public_bytes(serialization.Encoding.DER))
                   for c in (key.certificate, *key.chain))
        signature = (key.private_key.key_size + 7) // 8 * 2  # an ECDSA signature's DER < 2n
        found = (_Signer(key), 2 * (size + signature + 512))
        _signers[key.fingerprint] = found
    return found


def sign(pdf: bytes, *, attachment_name: str, attachment: bytes, signed_at: datetime,
         signer_name: str, key: keys.PdfKey, reserve: bool = True) -> bytes:
    """`pdf` with `attachment` embedded and signed (PAdES baseline B) by `key`."""
    writer = _Writer(io.BytesIO(pdf))
    writer.pin_modification_time(signed_at)
    data = embed.EmbeddedFileObject.from_file_data(
        writer, attachment, mime_type="application/json",
        params=embed.EmbeddedFileParams(creation_date=signed_at, modification_date=signed_at))
    embed.embed_file(writer, embed.FileSpec(
        file_spec_string=attachment_name, file_name=attachment_name, embedded_data=data,
        description="Open Badges 3.0 verifiable credential of this certificate"))
    signer, reserved = _signer(key)
    if not reserve:
        reserved = None
    meta = PdfSignatureMetadata(field_name=FIELD, subfilter=fields.SigSeedSubFilter.PADES,
                                name=signer_name, reason=f"Certificate issued by {signer_name}")
    out = io.BytesIO()
    try:
        _PdfSigner(meta, signer=signer, signing_time=signed_at).sign_pdf(
            writer, output=out, bytes_reserved=reserved)
    except SigningError as exc:  # more than reckoned (an unusual chain): let pyHanko measure
        log.warning("PDF signature larger than reserved (%s); measuring it", exc)
        _signers[key.fingerprint] = (signer, reserved * 2)
        return sign(pdf, attachment_name=attachment_name, attachment=attachment,
                    signed_at=signed_at, signer_name=signer_name, key=key, reserve=None)
    return out.getvalue()


@dataclass
class PdfCheck:
    signed: bool                   # carries a signature at all
    intact: bool = False           # the signature matches the bytes it covers
    whole_file: bool = False       # ... which are the whole file (nothing appended after)
    ours: bool = False             # signed with a certificate of ours (not withdrawn)
    signer: str | None = None      # the signing certificate's subject
    attachment: bytes | None = None  # the attached credential, if any

    @property
    def genuine(self) -> bool:
        return self.signed and self.intact and self.whole_file and self.ours


def _attachment(reader: PdfFileReader) -> bytes | None:
    try:
        names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
    except (KeyError, TypeError):
        return None
    for position in range(0, len(names) - 1, 2):
        name = str(names[position])
        if name.endswith(ATTACHMENT_SUFFIX):
            spec = names[position + 1].get_object()
            return spec["/EF"]["/F"].get_object().data
    return None


def check(pdf: bytes) -> PdfCheck:
    """What the PDF's signature says. Never raises for a malformed file: it is unsigned."""
    try:
        reader = PdfFileReader(io.BytesIO(pdf), strict=False)
        signatures = reader.embedded_regular_signatures
    except Exception as exc:  # any file a visitor uploads: unreadable is unsigned, not a 500
        log.info("unreadable PDF offered for verification: %s", exc)
        return PdfCheck(signed=False)
    if len(signatures) != 1:
        return PdfCheck(signed=bool(signatures))
    signature = signatures[0]
    result = PdfCheck(signed=True)
    try:
        certificate = signature.signer_cert
        result.signer = certificate.subject.human_friendly
        result.ours = keys.known_pdf_certificate(certificate.sha256.hex())
        # Trust is ours to decide (the registry above); the chain check only has to pass.
        context = ValidationContext(trust_roots=[certificate], allow_fetching=False)
        status = validate_pdf_signature(signature, context)
        result.intact = bool(status.intact and status.valid)
        result.whole_file = status.coverage == SignatureCoverageLevel.ENTIRE_FILE
        result.attachment = _attachment(reader)
    except Exception as exc:  # a hostile file must not become a 500
        log.info("PDF signature could not be checked: %s", exc)
        result.intact = False
    return result
