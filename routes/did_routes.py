"""The academy's DID document (did:web), outside /api/v1 where the method looks for it:
/.well-known/did.json for a PUBLIC_BASE_URL without a path, <path>/did.json with one."""
from __future__ import annotations

import json
from typing import Annotated, Literal

from flask import Blueprint
from pydantic import Field
from spectree import Response
from typing_extensions import TypedDict

from models import db
from services.credentials import keys
from utils.responses import Context, Did
from utils.validation import document, errors

DID_JSON = "application/did+json"


class MultikeyOut(TypedDict):
    """A public key of the academy (Ed25519, as a Multikey)."""

    id: Annotated[str, Field(examples=["did:web:academy.example.com#z6Mk..."])]
    type: Literal["Multikey"]
    controller: Did
    publicKeyMultibase: Annotated[str, Field(
        description="The Ed25519 public key, multibase base58",
        examples=["z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"])]


DidDocumentOut = TypedDict("DidDocumentOut", {
    "@context": Context,
    "id": Did,
    "verificationMethod": list[MultikeyOut],
    "assertionMethod": Annotated[list[str], Field(
        description="The keys that may sign credentials (ids of verificationMethod)")],
})
DidDocumentOut.__doc__ = ("The academy's DID document (W3C DID 1.0, did:web): the keys its "
                          "credentials are signed with.")

bp = Blueprint("did", __name__)


@bp.get("/.well-known/did.json")
@bp.get("/did.json")
@document(resp=Response("HTTP_200", **errors(429)), media={200: {DID_JSON: DidDocumentOut}},
          tags=["credentials", "public"])
def did_document():
    """The issuer's DID document: every credential key not withdrawn (old ones stay, so what
    they signed keeps verifying), each one an assertionMethod."""
    body = json.dumps(keys.did_document(), separators=(",", ":"))
    db.session.rollback()
    return body, 200, {"Content-Type": DID_JSON,
                       "Access-Control-Allow-Origin": "*",
                       "Cache-Control": "public, max-age=300"}
