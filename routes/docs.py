"""The API description, generated from the routes' own validation declarations."""
from __future__ import annotations

import copy

from flask import Blueprint, current_app

from spectree import Response

from utils.validation import document, spec

bp = Blueprint("docs", __name__)

# The one error handler can answer any operation with these (unknown path or method, a body
# over the limit, a rate limit, a dependency down, ...): the document says so for every
# operation, in the one error shape, unless the route declared them itself.
COMMON_ERRORS = {
    "400": "Bad request (malformed JSON)",
    "401": "Authentication required or token refused",
    "403": "Not allowed (role, ownership, blocked address)",
    "404": "Not found",
    "405": "Method not allowed",
    "409": "Conflict",
    "413": "Request body too large",
    "415": "Unsupported media type",
    "422": "Invalid input",
    "429": "Rate limited",
    "503": "A dependency is unavailable or not configured",
}
# Answers in another format than the JSON the route declares.
EXTRA_CONTENT = {
    ("/api/v1/admin/payments", "get", "200"): {"text/csv": {"schema": {"type": "string"}}},
}
_document: dict | None = None


def api_document() -> dict:
    global _document
    if _document is None:
        document = copy.deepcopy(spec.spec)
        error_ref = next((f"#/components/schemas/{name}" for name in
                          document.get("components", {}).get("schemas", {})
                          if name.startswith("ErrorOut")), None)
        for path in document.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                for status, description in COMMON_ERRORS.items():
                    if status not in responses and error_ref:
                        responses[status] = {"description": description, "content": {
                            "application/json": {"schema": {"$ref": error_ref}}}}
        for (path, method, status), content in EXTRA_CONTENT.items():
            response = document["paths"].get(path, {}).get(method, {}).get("responses", {})
            response.get(status, {}).setdefault("content", {}).update(content)
        _document = document
    return _document


@bp.get("/openapi.json")
@document(resp=Response("HTTP_200"), tags=["docs"])
def openapi():
    """This document (OpenAPI 3.1)."""
    return current_app.json.response(api_document())


@bp.get("/docs")
def docs_page():
    return spec.config.page_templates["swagger"].format(
        spec_url="/api/v1/openapi.json", spec_path=spec.config.path,
        **spec.config.swagger_oauth2_config(),
    )
