"""The contract the SPAs build on: /api/v1/openapi.json says, for every operation, what it
answers (a typed body for each status, the one error shape for each error), under a summary,
a stable operationId and a tag; uploads carry their multipart bodies; answers are shaped by
their declarations, so the document cannot drift from the code.

The node tests generate a TypeScript client from the document with openapi-typescript and
type-check SPA-style code against it with `tsc --strict` (tests/js/contract/spa.ts): a renamed
or dropped field of an answer fails them. Spectral lints the document with its OpenAPI
ruleset. They need node and the packages `make js-deps` installs; without node they skip, and
under CI=true they fail instead.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from flask import Blueprint
from pydantic import BaseModel
from spectree import Response
from typing_extensions import TypedDict, is_typeddict

from app import create_app
from routes.docs import api_document, operations
from utils.responses import MessageResponse, SignedCredential
from utils.validation import UndeclaredAnswer, validate
from utils.validation import document as document_route

CI = os.environ.get("CI", "").lower() == "true"
CONTRACT = Path(__file__).parent / "js" / "contract"
BIN = CONTRACT / "node_modules" / ".bin"
METHODS = ("get", "post", "put", "patch", "delete")
TEST_ONLY = "/api/v1/_probe"  # tests/support/probe_routes.py, registered by conftest only


@pytest.fixture(scope="module")
def document():
    app = create_app("testing")
    with app.app_context():
        return copy.deepcopy(api_document())


def each_operation(document):
    for path, item in document["paths"].items():
        if path.startswith(TEST_ONLY):
            continue
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def holes(schema, schemas, seen=frozenset(), where="$") -> list[str]:
    """Where a schema says nothing about what it holds: an object without properties, a map
    of anything, a value of any type."""
    while isinstance(schema, dict) and "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        seen, schema = seen | {name}, schemas[name]
    if not isinstance(schema, dict):
        return []
    found = []
    for key in ("anyOf", "oneOf", "allOf"):
        for n, sub in enumerate(schema.get(key, [])):
            found += holes(sub, schemas, seen, f"{where}.{key}[{n}]")
    if any(key in schema for key in ("anyOf", "oneOf", "allOf")):
        return found
    if not schema:
        return [where]
    if schema.get("type") == "array":
        return found + holes(schema.get("items", {}), schemas, seen, where + "[]")
    if schema.get("type") == "object" or "properties" in schema:
        extra = schema.get("additionalProperties")
        if schema.get("properties"):
            for name, sub in schema["properties"].items():
                found += holes(sub, schemas, seen, f"{where}.{name}")
            if extra is True or extra == {}:
                found.append(where + " takes any other key")
        elif isinstance(extra, dict) and extra:
            found += holes(extra, schemas, seen, where + "{*}")
        else:
            found.append(where)
    return found


# --- what every operation declares ------------------------------------------------------------

def test_every_operation_declares_what_a_client_needs(document):
    """Routes added later (on any branch) are held to this too: see AGENTS.md, "What a new
    route answers"."""
    problems = contract_problems(document)
    assert not problems, "\n".join(problems)
    assert len({op["operationId"] for _, _, op in each_operation(document)}) > 200


def test_a_route_declared_without_typed_answers_is_caught(document):
    """What a route written before typed answers (a branch from before issue 18) looks like in
    the document: an untyped object body, spectree's generated summary and operationId, no
    tag. Each is named."""
    changed = copy.deepcopy(document)
    changed["components"]["schemas"]["Envelope"] = {
        "type": "object", "title": "Envelope", "additionalProperties": True}
    changed["paths"]["/api/v1/wallet"] = {"get": {
        "summary": "wallet <GET>", "operationId": "get__api_v1_wallet", "tags": [],
        "responses": {"200": {"description": "OK", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Envelope"}}}},
            "404": {"description": "Not found"}}}}
    problems = [p for p in contract_problems(changed) if "/api/v1/wallet" in p]
    assert problems == [
        "GET /api/v1/wallet: operationId 'get__api_v1_wallet' is not a camelCase name",
        "GET /api/v1/wallet: no written summary (a docstring's first line)",
        "GET /api/v1/wallet: no tag",
        "GET /api/v1/wallet: 200 says nothing of $",
        "GET /api/v1/wallet: 404 has no body",
    ]


def contract_problems(document) -> list[str]:
    schemas = document["components"]["schemas"]
    tags = {tag["name"]: tag.get("description") for tag in document.get("tags", [])}
    problems, ids = [], {}
    for path, method, op in each_operation(document):
        name = f"{method.upper()} {path}"
        op_id = op.get("operationId", "")
        if not re.fullmatch(r"[a-z][A-Za-z0-9]*", op_id):
            problems.append(f"{name}: operationId {op_id!r} is not a camelCase name")
        if op_id in ids:
            problems.append(f"{name}: operationId {op_id} is also {ids[op_id]}'s")
        ids[op_id] = name
        summary = op.get("summary", "")
        if not summary or re.search(r"<[A-Z]+>$", summary):
            problems.append(f"{name}: no written summary (a docstring's first line)")
        if not op.get("tags"):
            problems.append(f"{name}: no tag")
        for tag in op.get("tags", []):
            if not tags.get(tag):
                problems.append(f"{name}: tag {tag!r} has no description (routes/docs.py TAGS)")
        successes = {s: r for s, r in op["responses"].items() if s.startswith("2")}
        if not any(r.get("content") for r in successes.values()):
            problems.append(f"{name}: no success answer with a body")
        for status, response in op["responses"].items():
            content = response.get("content")
            if not content and status != "204":
                problems.append(f"{name}: {status} has no body")
                continue
            for media_type, media in (content or {}).items():
                schema = media.get("schema")
                if schema is None:
                    problems.append(f"{name}: {status} {media_type} has no schema")
                elif media_type == "application/json":
                    problems += [f"{name}: {status} says nothing of {hole}"
                                 for hole in holes(schema, schemas)]
            if status[0] in "45" and "application/json" in (content or {}):
                ref = content["application/json"]["schema"].get("$ref", "")
                body = schemas.get(ref.rsplit("/", 1)[-1], {})
                if ref.endswith("/ReadyResponse"):
                    continue  # the readiness probe's 503 is its own report
                if not {"error", "code"} <= set(body.get("required", [])):
                    problems.append(f"{name}: {status} is not in the error shape")
    for component in schemas:
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", component):
            problems.append(f"component {component!r}: not a readable type name")
    return problems


def test_every_model_has_a_name_of_its_own():
    """Component names are class names; a nested model is published under its name once, so
    two models sharing a name anywhere would silently share one schema."""
    modules = [importlib.import_module(f"{package}.{path.stem}")
               for package in ("routes", "utils")
               for path in (Path(__file__).parent.parent / package).glob("*.py")
               if path.stem != "__init__"]
    homes: dict[str, set[str]] = {}
    for module in modules:
        for value in vars(module).values():
            if (is_typeddict(value) or (isinstance(value, type) and issubclass(value, BaseModel)
                                        and value is not BaseModel)) \
                    and value.__module__ == module.__name__:
                homes.setdefault(value.__name__, set()).add(module.__name__)
    shared = {name: sorted(where) for name, where in homes.items() if len(where) > 1}
    assert not shared, shared
    assert len(homes) > 150


def test_uploads_document_their_multipart_bodies(document):
    """Every view that reads a file from the request documents a multipart/form-data body
    with the file field (binary) and the other fields."""
    app = create_app("testing")
    known = operations(app)
    found = 0
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        while getattr(view, "__wrapped__", None) is not None:
            view = view.__wrapped__
        if "request.files" not in inspect.getsource(view):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found += 1
            op = document["paths"][path][method.lower()]
            form = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            assert form, f"{method} {path} reads an upload but documents no multipart body"
            ref = form["schema"]["$ref"].rsplit("/", 1)[-1]
            fields = document["components"]["schemas"][ref]["properties"]
            assert fields["file"] == {**fields["file"], "type": "string", "format": "binary"}
            required = document["components"]["schemas"][ref].get("required", [])
            if ref == "CredentialCheckForm":  # a file, or the credential pasted as text
                assert "credential" in fields and not required
            else:
                assert "file" in required
            assert (path, method.lower()) in known
    # lesson resources (2 paths), thumbnails (2), profile pictures (2), the verify page's check
    # of a certificate's PDF; a credential or PDF checked by the credentials API and the verify
    # page (2)
    assert found == 9


def test_aliases_are_marked_and_named_apart(document):
    create = document["paths"]["/api/v1/courses/create-courses"]["post"]
    assert create["x-alias-of"] == "POST /api/v1/courses"
    assert create["operationId"] == "coursesCreateCourseViaCoursesCreateCourses"
    assert "alias" in create["description"]
    canonical = document["paths"]["/api/v1/courses"]["post"]
    assert canonical["operationId"] == "coursesCreateCourse" and "x-alias-of" not in canonical
    # The same view served by another blueprint is an alias of its own blueprint's path.
    picture = document["paths"]["/api/v1/files/upload-profile-picture"]["post"]
    assert picture["x-alias-of"] == "POST /api/v1/auth/profile/picture"
    assert document["paths"]["/api/v1/auth/profile/picture"]["post"]["operationId"] == \
        "authUploadProfilePicture"


def test_the_document_describes_itself_and_the_file_answers(document):
    own = document["paths"]["/api/v1/openapi.json"]["get"]["responses"]["200"]["content"]
    assert own["application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAPIDocument"}
    pdf = document["paths"]["/api/v1/certificates/{certificate_id}/download"]["get"]
    assert pdf["responses"]["200"]["content"]["application/pdf"]["schema"]["format"] == "binary"
    csv = document["paths"]["/api/v1/admin/payments"]["get"]["responses"]["200"]["content"]
    assert set(csv) == {"application/json", "text/csv"}
    limited = document["paths"]["/api/v1/auth/login"]["post"]["responses"]["429"]
    assert "Retry-After" in limited["headers"]
    # The signed documents of verifiable credentials, in their own media types, typed.
    schemas, paths = document["components"]["schemas"], document["paths"]
    for path, media_type, model in (
            ("/api/v1/credentials/{number}", "application/ld+json", "OpenBadgeCredentialOut"),
            ("/api/v1/certificates/{certificate_id}/credential", "application/ld+json",
             "OpenBadgeCredentialOut"),
            ("/api/v1/credentials/status/{list_id}", "application/ld+json",
             "StatusListCredentialOut"),
            ("/.well-known/did.json", "application/did+json", "DidDocumentOut"),
            ("/did.json", "application/did+json", "DidDocumentOut")):
        content = paths[path]["get"]["responses"]["200"]["content"]
        assert content == {media_type: {"schema": {"$ref": f"#/components/schemas/{model}"}}}
        assert "@context" in schemas[model]["required"], model
    assert {"proof", "credentialSubject", "credentialStatus"} <= \
        set(schemas["OpenBadgeCredentialOut"]["required"])
    # The verify pages are HTML.
    for path, method, statuses in (("/verify/{number}", "get", ("200", "404")),
                                   ("/verify/{number}", "post", ("200", "404")),
                                   ("/verify/", "get", ("200",)), ("/verify/", "post", ("200",))):
        for status in statuses:
            content = paths[path][method]["responses"][status]["content"]
            assert content["text/html"]["schema"]["type"] == "string", (path, method, status)


# --- answers are shaped by their declarations -------------------------------------------------

class HeldCredentialProbe(TypedDict):
    """A body carrying a signed credential (as GET /certificates/{id} does)."""

    credential: SignedCredential
    label: str


def _echo_app(testing: bool):
    app = create_app("testing", overrides={"TESTING": testing})
    bp = Blueprint("shape_probe", __name__)

    @bp.get("/<string:case>")
    @validate(resp=Response(HTTP_200=MessageResponse))
    def answer(case: str):
        return {"extra": ({"message": "hi", "secret": "x"}, 200),
                "missing": ({}, 200),
                "status": ({"message": "made"}, 201),
                "typed": ({"message": 7}, 200),
                "fine": ({"message": "hi"}, 200)}[case]

    @bp.get("/held")
    @validate(resp=Response(HTTP_200=HeldCredentialProbe))
    def held():
        return {"label": "mine", "secret": 1,
                "credential": {"id": "urn:x", "credentialSchema": [{"type": "Older"}]}}

    @bp.get("/signed/<string:case>")
    @document_route(resp=Response("HTTP_200"),
                    media={200: {"application/ld+json": MessageResponse}})
    def signed(case: str):
        text = {"fine": '{"message": "as signed"}', "extra": '{"message": "hi", "proof": 1}',
                "missing": "{}", "garbled": "{"}[case]
        return text, 200, {"Content-Type": "application/ld+json"}

    app.register_blueprint(bp, url_prefix="/shape")
    return app


@pytest.mark.parametrize("case", ["extra", "missing", "status", "typed"])
def test_under_tests_an_answer_its_declaration_does_not_describe_is_an_error(case, capfd):
    client = _echo_app(testing=True).test_client()
    response = client.get(f"/shape/{case}")
    assert response.status_code == 500
    assert f"{UndeclaredAnswer.__module__}.UndeclaredAnswer: shape_probe.answer answered" in \
        capfd.readouterr().err
    assert client.get("/shape/fine").get_json() == {"message": "hi"}


def test_in_production_only_the_declared_keys_go_out():
    client = _echo_app(testing=False).test_client()
    response = client.get("/shape/extra")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert response.get_json() == {"message": "hi"}  # "secret" is not declared: never sent
    assert client.get("/shape/fine").get_json() == {"message": "hi"}


def test_a_signed_credential_inside_an_answer_goes_out_whole():
    """The body is shaped (undeclared keys dropped), the credential in it is not: its
    signature covers every key, including ones an earlier version put in."""
    client = _echo_app(testing=False).test_client()
    assert client.get("/shape/held").get_json() == {
        "label": "mine", "credential": {"id": "urn:x", "credentialSchema": [{"type": "Older"}]}}


@pytest.mark.parametrize("case", ["extra", "missing", "garbled"])
def test_under_tests_a_document_the_view_serialized_is_checked_too(case, capfd):
    """A JSON document the view serialized itself (a signed credential) goes out byte for byte,
    and under tests it must match the body model `media` names for its media type."""
    client = _echo_app(testing=True).test_client()
    assert client.get(f"/shape/signed/{case}").status_code == 500
    assert "shape_probe.signed answered 200 with a application/ld+json document that " \
        "MessageResponse does not describe" in capfd.readouterr().err
    fine = client.get("/shape/signed/fine")
    assert fine.status_code == 200 and fine.content_type == "application/ld+json"
    assert fine.data == b'{"message": "as signed"}'
    # In production it is not parsed at all.
    production = _echo_app(testing=False).test_client()
    assert production.get("/shape/signed/extra").data == b'{"message": "hi", "proof": 1}'


# --- the docs page works offline ------------------------------------------------------------

def test_the_docs_page_loads_nothing_from_another_host(client):
    for path in ("/api/v1/docs", "/api/v1/docs/swagger/", "/api/v1/docs/redoc/",
                 "/api/v1/docs/scalar/"):
        response = client.get(path)
        assert response.status_code == 200, path
        html = response.get_data(as_text=True)
        csp = response.headers["Content-Security-Policy"]
        assert "http" not in csp and "'unsafe-eval'" not in csp, csp
        assert "script-src 'self'" in csp
        urls = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert urls and all(url.startswith("/") for url in urls), urls
        assert "<script>" not in html  # no inline script: the CSP would refuse it
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.data) > 100, url
        asset.close()
    bundle = client.get("/api/v1/docs/assets/swagger-ui-bundle.js")
    assert "javascript" in bundle.content_type
    assert b"SwaggerUIBundle" in bundle.data
    licence = client.get("/api/v1/docs/assets/LICENSE")
    assert b"Apache License" in licence.data
    assert client.get("/api/v1/docs/assets/swagger-editor-bundle.js").status_code == 404
    assert client.get("/api/v1/docs/assets/..%2Fcore.py").status_code == 404
    # spectree's own copy of the document is this document.
    assert client.get("/api/v1/docs/openapi.json").get_json() == \
        client.get("/api/v1/openapi.json").get_json()


# --- the generated TypeScript client ----------------------------------------------------------

@pytest.fixture
def contract_tools() -> Path:
    """The node tools of tests/js/contract (conftest runs the tests that use them in one CI
    pass only)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if CI:
            pytest.fail("node and npm are needed for the contract tests, and CI=true forbids "
                        "skipping them")
        pytest.skip("node and npm are not installed")
    if not (BIN / "tsc").exists():
        pytest.fail("tests/js/contract has no node_modules: run `make js-deps`")
    return BIN


def run(*command, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def typecheck(tools: Path, document: dict, folder: Path) -> subprocess.CompletedProcess:
    """Generate the client from `document` and type-check spa.ts against it."""
    (folder / "openapi.json").write_text(json.dumps(document))
    generated = run(tools / "openapi-typescript", "openapi.json", "-o", "schema.ts",
                    "--default-non-nullable=false", cwd=folder)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    shutil.copy(CONTRACT / "spa.ts", folder / "spa.ts")
    (folder / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {
            "strict": True, "noEmit": True, "target": "ES2022", "module": "ESNext",
            "moduleResolution": "Bundler", "lib": ["ES2022", "DOM"], "types": [],
            "paths": {"openapi-fetch": [str(CONTRACT / "node_modules" / "openapi-fetch")]},
        },
        "files": ["spa.ts"],
    }))
    return run(tools / "tsc", "-p", "tsconfig.json", cwd=folder)


def test_the_generated_client_type_checks_spa_code(contract_tools, document, tmp_path):
    checked = typecheck(contract_tools, document, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    schema = (tmp_path / "schema.ts").read_text()
    assert "certificate_number: string;" in schema
    assert '"/api/v1/admin/refund-requests/{request_id}"' in schema


def test_a_renamed_or_dropped_field_fails_the_type_check(contract_tools, document, tmp_path):
    changed = copy.deepcopy(document)
    schemas = changed["components"]["schemas"]
    certificate = schemas["CertificateOut"]
    certificate["properties"]["number"] = certificate["properties"].pop("certificate_number")
    certificate["required"] = ["number" if r == "certificate_number" else r
                               for r in certificate["required"]]
    del schemas["TokensResponse"]["properties"]["access_token"]
    schemas["TokensResponse"]["required"].remove("access_token")
    # As a rename in to_dict would: in every body that carries the field.
    for schema in schemas.values():
        if "credential_url" in schema.get("properties", {}):
            rename(schema, "credential_url", "credential_link")
    rename(schemas["RefundDecisionResponse"], "refund", "gateway_refund")
    rename(schemas["RefundOut"], "credit_note_url", "credit_note")
    checked = typecheck(contract_tools, changed, tmp_path)
    assert checked.returncode != 0
    for field in ("certificate_number", "access_token", "credential_url", "refund",
                  "credit_note_url"):
        assert f"Property '{field}' does not exist" in checked.stdout, field


def rename(schema: dict, old: str, new: str) -> None:
    schema["properties"][new] = schema["properties"].pop(old)
    schema["required"] = [new if name == old else name for name in schema.get("required", [])]


def test_spectral_finds_no_error_in_the_document(contract_tools, document, tmp_path):
    tools = contract_tools
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    linted = run(tools / "spectral", "lint", "openapi.json", "--ruleset",
                 CONTRACT / ".spectral.yaml", "--format", "json", "--quiet",
                 "--fail-severity", "error", cwd=tmp_path)
    findings = json.loads(linted.stdout or "[]")
    errors = [f"{'.'.join(map(str, f['path']))}: {f['code']}: {f['message']}"
              for f in findings if f["severity"] == 0]
    assert not errors, "\n".join(errors[:30])
    assert linted.returncode == 0, linted.stderr
