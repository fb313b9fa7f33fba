"""The academy's DID document (did:web), outside /api/v1 where the method looks for it:
/.well-known/did.json for a PUBLIC_BASE_URL without a path, <path>/did.json with one."""
from __future__ import annotations

import json

from flask import Blueprint
from spectree import Response

from models import db
from services.credentials import keys
from utils.validation import document

bp = Blueprint("did", __name__)


@bp.get("/.well-known/did.json")
@bp.get("/did.json")
@document(resp=Response("HTTP_200"), tags=["credentials", "public"])
def did_document():
    """The issuer's DID document: every credential key not withdrawn (old ones stay, so what
    they signed keeps verifying), each one an assertionMethod."""
    body = json.dumps(keys.did_document(), separators=(",", ":"))
    db.session.rollback()
    return body, 200, {"Content-Type": "application/did+json",
                       "Access-Control-Allow-Origin": "*",
                       "Cache-Control": "public, max-age=300"}
