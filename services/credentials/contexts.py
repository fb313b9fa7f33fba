"""The JSON-LD contexts our credentials use, bundled in the repository, and RDF Dataset
Canonicalization (RDFC-1.0) over them with pyld, whose URDNA2015 is the same algorithm.

Nothing is fetched to issue or verify: the document loader knows these files and refuses any
other URL, so a credential naming another context cannot be canonicalized here (it is not
ours). The files are the published contexts as the npm packages the JavaScript verifier uses
ship them (tests/test_credentials_js.py checks they are identical).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pyld import jsonld

FOLDER = Path(__file__).resolve().parent / "contexts"

VC_V2 = "https://www.w3.org/ns/credentials/v2"
OB_V3 = "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json"
MULTIKEY_V1 = "https://w3id.org/security/multikey/v1"
DATA_INTEGRITY_V2 = "https://w3id.org/security/data-integrity/v2"
DID_V1 = "https://www.w3.org/ns/did/v1"

FILES = {
    VC_V2: "credentials-v2.jsonld",
    OB_V3: "ob-v3p0-context-3.0.3.json",
    MULTIKEY_V1: "multikey-v1.jsonld",
    DATA_INTEGRITY_V2: "data-integrity-v2.jsonld",
}


class UnknownContext(ValueError):
    """A document names a context that is not bundled here."""


@lru_cache(maxsize=None)
def bundled(url: str) -> dict:
    name = FILES.get(url)
    if name is None:
        raise UnknownContext(f"context not available offline: {url[:200]}")
    return json.loads((FOLDER / name).read_text(encoding="utf-8"))


def load_document(url: str, options=None) -> dict:
    """pyld's document loader: the bundled contexts only, never the network."""
    return {"contentType": "application/ld+json", "contextUrl": None, "documentUrl": url,
            "document": bundled(url)}


def canonicalize(document: dict) -> str:
    """The document's RDFC-1.0 canonical N-Quads."""
    try:
        return jsonld.normalize(document, {"algorithm": "URDNA2015",
                                           "format": "application/n-quads",
                                           "documentLoader": load_document})
    except jsonld.JsonLdError as exc:
        cause = exc
        while cause is not None:  # pyld wraps the loader's error
            if isinstance(cause, UnknownContext):
                raise cause from exc
            cause = getattr(cause, "cause", None) or cause.__cause__
        raise
