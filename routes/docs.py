"""The API description, generated from the routes' own declarations, and the docs page that
shows it: Swagger UI served from the app itself (the pinned `swagger-ui-py` package ships its
files), so it works without internet and its CSP names no other host.

spectree builds the document from each route's `validate(...)` declaration; `api_document()`
adds what it cannot know: a stable operationId per path and method, the alias paths of the API
documentation marked as such, the error answers every operation can give (in the one error
shape), the answers that are files or pages, and what each tag is about."""
from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

from flask import Blueprint, Flask, abort, current_app, send_from_directory
from pydantic import TypeAdapter
from spectree import Response

from utils.pipeline.idempotency import REPLAYED_HEADER
from utils.validation import component_name, document, spec

bp = Blueprint("docs", __name__)

TAGS = {
    "health": "Liveness and readiness probes.",
    "docs": "This description of the API.",
    "auth": "Registration (phone code or direct), sign-in (password or Google), tokens, "
            "passwords and the profile.",
    "users": "The signed-in user's own space: dashboard, courses, certificates, profile.",
    "files": "Uploads (multipart/form-data) and downloads.",
    "courses": "The catalog's courses and writing them (instructors, admins).",
    "categories": "Master categories and subcategories (admins write; everyone reads them "
                  "through `public`).",
    "prerequisites": "Courses to complete before enrolling in another.",
    "enrollments": "Enrolling, lesson progress, completion.",
    "modules": "A course's modules.",
    "lessons": "A module's lessons.",
    "lesson resources": "Files attached to lessons.",
    "certificates": "Certificates of completion: the holder's, their PDFs, public "
                    "verification.",
    "credentials": "Certificates as Open Badges 3.0 verifiable credentials: the signed "
                   "credentials, the revocation status lists, the issuer's DID document, and "
                   "verification of a credential or certificate PDF.",
    "public": "No authentication: the catalog and certificate verification.",
    "payments": "Razorpay and Stripe checkouts, payment history, invoices, refund requests.",
    "webhooks": "Signed events from the payment gateways.",
    "live sessions": "Live classes: scheduling, joining, recordings.",
    "notifications": "In-app notifications and e-mail preferences.",
    "contact": "The contact form (admins read what it receives).",
    "admin": "Administration: figures, users, moderation, payments, audit log, jobs.",
    "jobs": "Background jobs started by a request.",
}

# What any operation may answer besides what it declares, in the one error shape: the
# pipeline, the middleware and the limiter stand in front of every view.
COMMON_ERRORS = {
    "400": "Bad request: a body that claims to be JSON and is not, or nests deeper than 32 "
           "levels (`json_too_deep`)",
    "403": "Not allowed: this client address is blocked",
    "413": "Request body too large",
    "422": "Invalid input: NUL or another control character in a query value, a form field or "
           "a JSON string or key (`details` names each)",
    "429": "Rate limited: retry after `Retry-After` seconds",
    "500": "Unexpected error (logged with the request id)",
    "503": "A dependency (database, Redis, a gateway) is unavailable or not configured",
}
WRITE_ERRORS = {"409": "Conflict: the data changed meanwhile"}
PATH_ERRORS = {"404": "Not found"}
JSON_BODY_ERRORS = {"415": "Send the body as JSON with `Content-Type: application/json`"}
AUTH_ERRORS = {"401": "Authentication required, or the token was refused"}
DESCRIPTIONS = {"401": "Authentication required, or the token was refused",
                "402": "Payment required: the course is paid",
                "403": "Not allowed (role, ownership, blocked address)", "404": "Not found",
                "409": "Conflict", "410": "Gone", "413": "Request body too large",
                "415": "Unsupported media type", "416": "Range not satisfiable",
                "422": "Invalid input: `details` maps each field to its message",
                "423": "Account locked", "429": "Rate limited: retry after `Retry-After` seconds",
                "502": "The payment gateway refused the request",
                "503": "A dependency is unavailable or not configured"}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait",
                               "schema": {"type": "integer"}}}
REPLAYED = {REPLAYED_HEADER: {
    "description": "`true` when this is the first answer to the request's `Idempotency-Key`, "
                   "given again rather than doing the work twice",
    "schema": {"type": "string", "enum": ["true"]}}}
IDEMPOTENCY_CONFLICT = ("Conflict: the data changed meanwhile, or a request with this "
                        "`Idempotency-Key` is still being processed (retry after `Retry-After`)")
IDEMPOTENCY_INVALID = ("Invalid input: `details` maps each field to its message; or this "
                       "`Idempotency-Key` was used with another request "
                       "(`idempotency_key_reused`)")
IDEMPOTENCY_BAD_KEY = ("Bad request: a body that claims to be JSON and is not or nests deeper "
                       "than 32 levels, or an "
                       "`Idempotency-Key` that is not 1 to 255 visible ASCII characters "
                       "(`invalid_idempotency_key`)")
WRITES = ("post", "put", "patch", "delete")
PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")

_document: dict | None = None


# --- the document -----------------------------------------------------------------------------

def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: /courses/<int:course_id> -> /courses/{course_id}."""
    return PARAMETER.sub(r"{\1}", rule)


def _camel(words: str) -> str:
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", words) if p]
    return "".join(p[:1].upper() + p[1:] for p in parts)


def _declared(view, attribute: str):
    while view is not None:
        if getattr(view, attribute, None) is not None:
            return getattr(view, attribute)
        view = getattr(view, "__wrapped__", None)
    return None


def operations(app: Flask) -> dict[tuple[str, str], dict]:
    """Every (OpenAPI path, method) the app serves: its operationId and, for an alias, the
    operation it is an alias of. A view's canonical path is the last one registered under its
    own endpoint (the topmost route decorator: the RESTful path); its other paths, and paths
    other blueprints serve it on (`utils.routing.alias`), are aliases. The operationId is
    `{blueprint}{View}` in camelCase for the canonical path, and for an alias that followed by
    `Via` and the alias path's words (and its method when it differs)."""
    by_view: dict[int, list] = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            by_view.setdefault(id(view), []).append((rule, method.lower(), view))
    blueprint_of = {blueprint.import_name: name for name, blueprint in app.blueprints.items()}
    result: dict[tuple[str, str], dict] = {}
    for entries in by_view.values():
        view = entries[0][2]
        blueprint = blueprint_of.get(view.__module__, "")
        home = [e for e in entries if e[0].endpoint == f"{blueprint}.{view.__name__}"] or entries
        canonical_rule, canonical_method, _ = home[-1]
        base = _camel(blueprint) + _camel(view.__name__)
        base = base[:1].lower() + base[1:]
        canonical = (openapi_path(canonical_rule.rule), canonical_method)
        for rule, method, _ in entries:
            key = (openapi_path(rule.rule), method)
            if key == canonical:
                result[key] = {"operationId": base}
                continue
            words = rule.rule.removeprefix(app.config["API_PREFIX"])
            suffix = _camel(PARAMETER.sub("", words))
            if method != canonical_method:
                suffix += _camel(method)
            result[key] = {"operationId": f"{base}Via{suffix}", "alias_of": canonical}
    return result


def _media_content(entries: dict, schemas: dict) -> dict:
    content = {}
    for media_type, value in entries.items():
        if isinstance(value, dict):
            content[media_type] = value
        elif isinstance(value, type):  # a body model: a JSON document in another media type
            content[media_type] = {"schema": {"$ref": _REF + _add_component(value, schemas)}}
        elif media_type.startswith("text/"):
            content[media_type] = {"schema": {"type": "string", "description": value}}
        else:
            content[media_type] = {"schema": {"type": "string", "format": "binary",
                                              "description": value}}
    return content


def _add_component(model: type, schemas: dict) -> str:
    """Publish a body model that only a `media` declaration names (spectree publishes those
    of `resp`), and the models it nests, under their class names."""
    name = component_name(model)
    if name not in schemas:
        schema = TypeAdapter(model).json_schema(ref_template=_REF + "{model}",
                                                mode="serialization")
        for nested, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(nested, definition)
        schemas[name] = schema
    return name


def _error_response(description: str, error_ref: str, status: str) -> dict:
    response = {"description": description,
                "content": {"application/json": {"schema": {"$ref": error_ref}}}}
    if status == "429":
        response["headers"] = RETRY_AFTER
    return response


def _document_idempotency(responses: dict) -> None:
    """An operation that honours `Idempotency-Key` (utils/pipeline/idempotency.py): its
    successes may be the first answer replayed, and its 409 asks to retry shortly."""
    for status, response in responses.items():
        if status.startswith("2"):
            response.setdefault("headers", {}).update(REPLAYED)
        elif status == "409":
            response["description"] = IDEMPOTENCY_CONFLICT
            response["headers"] = RETRY_AFTER
        elif status == "422":
            response["description"] = IDEMPOTENCY_INVALID
        elif status == "400":
            response["description"] = IDEMPOTENCY_BAD_KEY


def build_document(app: Flask) -> dict:
    document_ = copy.deepcopy(spec.spec)
    schemas = document_["components"]["schemas"]
    schemas.update(OPENAPI_SCHEMAS)
    error_ref = "#/components/schemas/ErrorResponse"
    known = operations(app)
    for path, item in document_["paths"].items():
        for method, operation in item.items():
            facts = known.get((path, method), {})
            if "operationId" in facts:
                operation["operationId"] = facts["operationId"]
            if "alias_of" in facts:
                alias_path, alias_method = facts["alias_of"]
                operation["x-alias-of"] = f"{alias_method.upper()} {alias_path}"
                note = (f"An alias of `{alias_method.upper()} {alias_path}` (the API "
                        "documentation's path): the same operation.")
                operation["description"] = (operation.get("description") or "").strip()
                operation["description"] = (note + "\n\n" + operation["description"]).strip()
            if not operation.get("description"):
                operation.pop("description", None)
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if status in DESCRIPTIONS and schema == {"$ref": error_ref}:
                    response["description"] = DESCRIPTIONS[status]
                if status == "429":
                    response["headers"] = RETRY_AFTER
            extra = dict(COMMON_ERRORS)
            if operation.get("security"):
                extra.update(AUTH_ERRORS)
            if "{" in path:
                extra.update(PATH_ERRORS)
            if method in WRITES:
                extra.update(WRITE_ERRORS)
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                extra.update(JSON_BODY_ERRORS)
            for status, description in extra.items():
                if status not in responses:
                    responses[status] = _error_response(description, error_ref, status)
            view = app.view_functions.get(_endpoint(app, path, method))
            for status, entries in (_declared(view, "api_media") or {}).items():
                response = responses.setdefault(str(status), {"description": "OK"})
                response.setdefault("content", {}).update(_media_content(entries, schemas))
            if _declared(view, "idempotent"):
                _document_idempotency(responses)
            operation["responses"] = dict(sorted(responses.items()))
    document_["tags"] = [{"name": name, "description": TAGS.get(name, "")}
                         for name in sorted({t for item in document_["paths"].values()
                                             for op in item.values() for t in op["tags"]},
                                            key=lambda n: list(TAGS).index(n)
                                            if n in TAGS else len(TAGS))]
    document_["info"]["description"] = INFO_DESCRIPTION
    _drop_unused(document_)
    return document_


def _drop_unused(document_: dict) -> None:
    """Query models are published as parameters: their component copies, which nothing
    refers to, go."""
    schemas = document_["components"]["schemas"]
    used, todo = set(), [document_["paths"]]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            ref = value.get("$ref")
            if isinstance(ref, str) and ref.startswith(_REF) and ref[len(_REF):] not in used:
                used.add(ref[len(_REF):])
                todo.append(schemas.get(ref[len(_REF):]))
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    for name in list(schemas):
        if name not in used:
            del schemas[name]


def _endpoint(app: Flask, path: str, method: str) -> str | None:
    for rule in app.url_map.iter_rules():
        if openapi_path(rule.rule) == path and method.upper() in rule.methods:
            return rule.endpoint
    return None


def api_document() -> dict:
    global _document
    if _document is None:
        _document = build_document(current_app)
    return _document


INFO_DESCRIPTION = """The REST API of the academy: the public catalog, accounts, enrollment and
progress, payments, certificates, live classes, notifications and administration.

Send `Authorization: Bearer <access token>` (from `POST /api/v1/auth/login`) where an operation
names the `bearer` scheme. Every error answers in one shape, `ErrorResponse`
(`{"error", "code", "details"?}`). Lists take `?page=1&per_page=20` (at most 100) and answer
with `pagination`. Times are ISO-8601 in UTC with an offset; money is a number with two
decimals beside its ISO 4217 `currency`. Paths marked `x-alias-of` are the API documentation's
names for the same operation.
"""

# The document describes itself (GET /api/v1/openapi.json): OpenAPI 3.1 as this document writes
# it, with the JSON Schemas of its components.
_REF = "#/components/schemas/"
_PLAIN = {"type": ["string", "number", "integer", "boolean", "null"]}
_SCALAR = {"anyOf": [_PLAIN, {"type": "array", "items": _PLAIN},
                     {"type": "object", "additionalProperties": _PLAIN}]}
OPENAPI_SCHEMAS = {
    "JSONSchema": {
        "type": "object", "description": "A JSON Schema (2020-12), as this document writes "
                                         "them",
        "properties": {
            "$ref": {"type": "string"}, "title": {"type": "string"},
            "description": {"type": "string"}, "format": {"type": "string"},
            "pattern": {"type": "string"}, "contentMediaType": {"type": "string"},
            "type": {"anyOf": [{"type": "string"},
                               {"type": "array", "items": {"type": "string"}}]},
            "properties": {"type": "object", "additionalProperties": {"$ref": _REF +
                                                                     "JSONSchema"}},
            "additionalProperties": {"anyOf": [{"type": "boolean"},
                                               {"$ref": _REF + "JSONSchema"}]},
            "items": {"$ref": _REF + "JSONSchema"},
            "anyOf": {"type": "array", "items": {"$ref": _REF + "JSONSchema"}},
            "oneOf": {"type": "array", "items": {"$ref": _REF + "JSONSchema"}},
            "allOf": {"type": "array", "items": {"$ref": _REF + "JSONSchema"}},
            "required": {"type": "array", "items": {"type": "string"}},
            "enum": {"type": "array", "items": _SCALAR},
            "const": _SCALAR, "default": _SCALAR,
            "examples": {"type": "array", "items": _SCALAR},
            "minimum": {"type": "number"}, "maximum": {"type": "number"},
            "exclusiveMinimum": {"type": "number"}, "exclusiveMaximum": {"type": "number"},
            "minLength": {"type": "integer"}, "maxLength": {"type": "integer"},
            "minItems": {"type": "integer"}, "maxItems": {"type": "integer"},
            "deprecated": {"type": "boolean"},
        },
    },
    "OpenAPIMediaType": {
        "type": "object", "description": "A body in one media type",
        "properties": {"schema": {"$ref": _REF + "JSONSchema"}},
    },
    "OpenAPIResponse": {
        "type": "object", "description": "An answer of an operation",
        "required": ["description"],
        "properties": {
            "description": {"type": "string"},
            "content": {"type": "object",
                        "additionalProperties": {"$ref": _REF + "OpenAPIMediaType"}},
            "headers": {"type": "object", "additionalProperties": {
                "type": "object", "properties": {"description": {"type": "string"},
                                                 "schema": {"$ref": _REF + "JSONSchema"}}}},
        },
    },
    "OpenAPIParameter": {
        "type": "object", "description": "A path or query parameter",
        "required": ["name", "in"],
        "properties": {"name": {"type": "string"}, "in": {"type": "string"},
                       "required": {"type": "boolean"}, "description": {"type": "string"},
                       "schema": {"$ref": _REF + "JSONSchema"}},
    },
    "OpenAPIOperation": {
        "type": "object", "description": "What a path answers to one method",
        "required": ["operationId", "summary", "tags", "responses"],
        "properties": {
            "operationId": {"type": "string"}, "summary": {"type": "string"},
            "description": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "parameters": {"type": "array", "items": {"$ref": _REF + "OpenAPIParameter"}},
            "requestBody": {"type": "object", "properties": {
                "required": {"type": "boolean"},
                "content": {"type": "object",
                            "additionalProperties": {"$ref": _REF + "OpenAPIMediaType"}}}},
            "responses": {"type": "object",
                          "additionalProperties": {"$ref": _REF + "OpenAPIResponse"}},
            "security": {"type": "array", "items": {
                "type": "object", "additionalProperties": {"type": "array",
                                                           "items": {"type": "string"}}}},
            "x-alias-of": {"type": "string",
                           "description": "The operation this path is an alias of"},
        },
    },
    "OpenAPIDocument": {
        "type": "object", "description": "This document (OpenAPI 3.1)",
        "required": ["openapi", "info", "paths", "components"],
        "properties": {
            "openapi": {"type": "string", "examples": ["3.1.0"]},
            "info": {"type": "object", "required": ["title", "version"],
                     "properties": {"title": {"type": "string"}, "version": {"type": "string"},
                                    "description": {"type": "string"}}},
            "tags": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "description": {"type": "string"}}}},
            "paths": {"type": "object", "additionalProperties": {
                "type": "object", "additionalProperties": {"$ref": _REF + "OpenAPIOperation"}}},
            "components": {"type": "object", "properties": {
                "schemas": {"type": "object",
                            "additionalProperties": {"$ref": _REF + "JSONSchema"}},
                "securitySchemes": {"type": "object", "additionalProperties": {
                    "type": "object", "properties": {
                        "type": {"type": "string"}, "scheme": {"type": "string"},
                        "bearerFormat": {"type": "string"}}}}}},
            "security": {"type": "array", "items": {
                "type": "object", "additionalProperties": {"type": "array",
                                                           "items": {"type": "string"}}}},
        },
    },
}


@bp.get("/openapi.json")
@document(resp=Response("HTTP_200"), tags=["docs"],
          media={200: {"application/json": {"schema": {"$ref": _REF + "OpenAPIDocument"}}}})
def openapi():
    """This document (OpenAPI 3.1): generate a typed client from it."""
    return current_app.json.response(api_document())


# --- the page ---------------------------------------------------------------------------------

# Swagger UI's files, from the swagger-ui-py package (found without importing it: its own
# handlers, which we do not use, import more). Only what the page loads is served.
ASSETS = {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png",
          "LICENSE"}
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>API documentation</title>
<link rel="stylesheet" href="/api/v1/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/api/v1/docs/assets/favicon-32x32.png" sizes="32x32">
</head>
<body>
<div id="swagger-ui" data-spec-url="/api/v1/openapi.json"></div>
<script src="/api/v1/docs/assets/swagger-ui-bundle.js"></script>
<script src="/api/v1/docs/assets/swagger-initializer.js"></script>
</body>
</html>
"""
INITIALIZER = """window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""


def assets_folder() -> Path:
    found = importlib.util.find_spec("swagger_ui")
    if found is None or not found.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed (requirements.txt)")
    return Path(list(found.submodule_search_locations)[0]) / "static"


@bp.get("/docs")
def docs_page():
    """The docs page: Swagger UI on this document, served by the app (no CDN)."""
    return PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}


@bp.get("/docs/assets/<string:name>")
def docs_asset(name: str):
    """Swagger UI's files (and its licence), and the page's start-up script."""
    if name == "swagger-initializer.js":
        return INITIALIZER, 200, {"Content-Type": "text/javascript; charset=utf-8",
                                  "Cache-Control": "public, max-age=3600"}
    if name not in ASSETS:
        abort(404)
    return send_from_directory(assets_folder(), name, max_age=86400)


def serve_spectree_pages(app: Flask) -> None:
    """spectree also registers its own copy of the document and its pages (Swagger, ReDoc and
    Scalar from CDNs) under /api/v1/docs/: those paths answer with this document and the
    offline page instead."""
    for endpoint, rule in [(r.endpoint, r.rule) for r in app.url_map.iter_rules()]:
        if endpoint.startswith("openapi_"):
            app.view_functions[endpoint] = openapi if rule.endswith(".json") else docs_page
