"""Data Integrity proofs with the eddsa-rdfc-2022 cryptosuite (W3C "Data Integrity EdDSA
Cryptosuites v1.0"), the algorithm as the specification gives it:

1. transformation: the document without its proof, canonicalized with RDFC-1.0;
2. proof configuration: the proof's options without `proofValue`, with the document's
   `@context`, canonicalized the same way;
3. hashing: SHA-256 of the canonical proof configuration, followed by SHA-256 of the canonical
   document (64 bytes);
4. the Ed25519 signature of those bytes, multibase base58btc-encoded, is `proofValue`.
"""
from __future__ import annotations

import copy
import enum
import hashlib
from datetime import datetime, timezone
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from pyld import jsonld

from services.credentials import contexts, keys

PROOF_TYPE = "DataIntegrityProof"
CRYPTOSUITE = "eddsa-rdfc-2022"


class ProofCheck(enum.Enum):
    VALID = "valid"
    NO_PROOF = "no_proof"            # nothing to check
    UNSUPPORTED = "unsupported"      # another proof type or cryptosuite
    UNKNOWN_KEY = "unknown_key"      # not signed by a key of ours (or a withdrawn one)
    BAD_SIGNATURE = "bad_signature"  # the content is not what was signed
    UNREADABLE = "unreadable"        # cannot be canonicalized (say, a context not ours)


def timestamp(value: datetime) -> str:
    """An XSD dateTimeStamp in UTC, to the second."""
    return value.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def hash_data(document: dict, options: dict) -> bytes:
    """Steps 1 to 3: what the signature covers."""
    config = {"@context": document.get("@context"), **options}
    config.pop("proofValue", None)
    unsecured = {k: v for k, v in document.items() if k != "proof"}
    canonical_config = contexts.canonicalize(config)
    canonical_document = contexts.canonicalize(unsecured)
    return (hashlib.sha256(canonical_config.encode("utf-8")).digest()
            + hashlib.sha256(canonical_document.encode("utf-8")).digest())


def add_proof(document: dict, key: keys.CredentialKey, created: datetime) -> dict:
    """A copy of `document` with its proof, signed by `key` for the assertionMethod purpose."""
    options = {
        "type": PROOF_TYPE,
        "cryptosuite": CRYPTOSUITE,
        "created": timestamp(created),
        "verificationMethod": keys.verification_method_id(key.multibase),
        "proofPurpose": "assertionMethod",
    }
    signature = key.sign(hash_data(document, options))
    secured = copy.deepcopy(document)
    secured["proof"] = {**options, "proofValue": keys.multibase_b58(signature)}
    return secured


def verify_proof(document: dict,
                 resolve_key: Callable[[str], ed25519.Ed25519PublicKey | None]) -> ProofCheck:
    """Check the document's one proof; `resolve_key(verificationMethod)` answers the public
    key of a verification method we trust, or None."""
    proof = document.get("proof")
    if isinstance(proof, list) and len(proof) == 1:
        proof = proof[0]
    if not isinstance(proof, dict):
        return ProofCheck.NO_PROOF
    if (proof.get("type") != PROOF_TYPE or proof.get("cryptosuite") != CRYPTOSUITE
            or proof.get("proofPurpose") != "assertionMethod"):
        return ProofCheck.UNSUPPORTED
    if "@context" in proof:
        # The proof's contexts must open the document's (eddsa-rdfc-2022, Verify Proof).
        wanted = proof["@context"] if isinstance(proof["@context"], list) else [proof["@context"]]
        have = document.get("@context")
        have = have if isinstance(have, list) else [have]
        if have[:len(wanted)] != wanted:
            return ProofCheck.BAD_SIGNATURE
    public_key = resolve_key(proof.get("verificationMethod"))
    if public_key is None:
        return ProofCheck.UNKNOWN_KEY
    value = proof.get("proofValue")
    try:
        signature = keys.from_multibase_b58(value) if isinstance(value, str) else b""
    except ValueError:
        signature = b""
    if len(signature) != 64:
        return ProofCheck.BAD_SIGNATURE
    options = {k: v for k, v in proof.items() if k != "proofValue"}
    try:
        data = hash_data(document, options)
    except (contexts.UnknownContext, jsonld.JsonLdError, TypeError, ValueError, KeyError,
            AttributeError, IndexError, RecursionError):
        # Anything a hostile document can make the JSON-LD processor stumble on.
        return ProofCheck.UNREADABLE
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return ProofCheck.BAD_SIGNATURE
    return ProofCheck.VALID
