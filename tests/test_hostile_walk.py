"""Hostile input against every operation of /api/v1/openapi.json: for each operation, every
path parameter, query parameter and (top-level and nested) body field gets, one at a time, NUL
and control characters, an over-long string, integers beyond an Integer column, numbers beyond
any column (1e999999, NaN, Infinity) and dates in year 1 and 9999, the rest of the request
being valid; every JSON body is also sent nested 1,000 deep. Each answer must be a 4xx in the
one error shape: never a 5xx, never a success (the hostile value must not be stored).

Requests are made as an admin; an operation that refuses the admin's role (403) is tried as an
instructor, then a student, so its input checks are reached. The walk is generated from the
document, so a new route is walked without a change here. Cost: about 1,700 requests, 15 s
on PostgreSQL (marked `fuzz`: it runs in CI's fuzz pass); all of them reach the input checks
(400 for the deep bodies, 404 for the path values, 422 for the rest; none stops at 401/403, which the test
checks: a walk that never reaches the checks would prove nothing)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest

from routes.docs import api_document
from tests.support.fuzz_app import fuzz_app, signed_in

pytestmark = pytest.mark.fuzz

APP = fuzz_app()
with APP.app_context():
    DOCUMENT = api_document()
SCHEMAS = DOCUMENT["components"]["schemas"]
METHODS = ("get", "post", "put", "patch", "delete")
OPERATIONS = [(method.upper(), path, op) for path, item in DOCUMENT["paths"].items()
              for method, op in item.items() if method in METHODS]

HUGE = "\uffffHUGE"  # placeholders written into the JSON text as bare number tokens
NAN = "\uffffNAN"
DEEP = "[" * 1000 + "]" * 1000
# The contract caps per_page at 100 rather than refusing larger values.
CAPPED = {"per_page"}
FUTURE = (datetime.now(timezone.utc) + timedelta(days=3)).replace(microsecond=0)


# --- reading the document -----------------------------------------------------------------------

def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[-1]]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [resolve(s) for s in schema[key] if s.get("type") != "null"]
            if branches:
                merged = {k: v for k, v in schema.items() if k != key}
                return {**merged, **branches[0]}
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return {**{k: v for k, v in schema.items() if k != "allOf"},
                **resolve(schema["allOf"][0])}
    return schema


def valid(schema: dict):
    """A value the schema accepts (as far as a generator without patterns can tell)."""
    schema = resolve(schema)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "date-time":
            return FUTURE.isoformat()
        if fmt == "date":
            return FUTURE.date().isoformat()
        if fmt == "email":
            return "walker@example.com"
        if fmt in ("uri", "url"):
            return "https://example.com/x"
        text = "Walker1a"
        low, high = schema.get("minLength", 1), schema.get("maxLength", 64)
        return (text * (low // len(text) + 1))[:max(low, min(len(text), high))]
    if kind == "integer":
        return max(schema.get("minimum", 1), 1)
    if kind == "number":
        return max(schema.get("minimum", 1), 1)
    if kind == "boolean":
        return True
    if kind == "array":
        return [valid(schema.get("items", {}))] * schema.get("minItems", 0)
    if kind == "object" or "properties" in schema:
        return {name: valid(prop) for name, prop in schema.get("properties", {}).items()
                if name in schema.get("required", ())}
    return "x"


def hostile(schema: dict) -> list:
    """The hostile values for a field of this schema."""
    schema = resolve(schema)
    kind = schema.get("type")
    if kind == "string" and schema.get("format") == "binary":
        return []
    if kind == "string" or "enum" in schema:
        values = ["a\x00b", "a\x1bb", "a\r\nBcc: x@example.com"[: schema.get("maxLength", 99)]]
        if "maxLength" in schema:
            values.append("x" * (schema["maxLength"] + 1))
        if schema.get("format") == "date":
            values += ["0001-01-01", "9999-12-31"]
        if schema.get("format") == "date-time":
            values += ["0001-01-01T00:10:00+00:00", "9999-12-31T23:59:00+00:00"]
        return values
    if kind == "integer":
        return [2**31, 10**20, -(10**20)]
    if kind == "number":
        return [HUGE, NAN, 10**20]
    if kind == "array":
        return [[value] for value in hostile(schema.get("items", {}))]
    return []


def multi_line(schema: dict) -> bool:
    """Long text may keep line breaks (utils/validators.SINGLE_LINE_MAX)."""
    schema = resolve(schema)
    return schema.get("type") == "string" and schema.get("maxLength", 10**9) > 300


def body_fields(schema: dict, prefix: tuple = (), depth: int = 0):
    """(path, schema) of every property of a body schema, nested objects included."""
    schema = resolve(schema)
    for name, prop in schema.get("properties", {}).items():
        yield (*prefix, name), prop
        inner = resolve(prop)
        if depth < 2 and inner.get("properties"):
            yield from body_fields(inner, (*prefix, name), depth + 1)


def with_value(base: dict, path: tuple, value) -> dict:
    body = json.loads(json.dumps(base))
    target = body
    for name in path[:-1]:
        target = target.setdefault(name, {})
        if not isinstance(target, dict):
            return body
    target[path[-1]] = value
    return body


def json_text(body) -> str:
    return (json.dumps(body).replace(json.dumps(HUGE), "1e999999")
            .replace(json.dumps(NAN), "NaN"))


# --- one operation --------------------------------------------------------------------------

def cases(method: str, path: str, op: dict):
    """(label, url, query, body kind, body) for every hostile request of the operation."""
    params = op.get("parameters", [])
    path_values = {p["name"]: valid(p.get("schema", {})) for p in params if p["in"] == "path"}
    base_query = {p["name"]: valid(p.get("schema", {})) for p in params
                  if p["in"] == "query" and p.get("required")}

    def url(values: dict) -> str:
        result = path
        for name, value in values.items():
            result = result.replace("{%s}" % name, quote(str(value), safe=""))
        return result

    content = (op.get("requestBody") or {}).get("content", {})
    json_schema = content.get("application/json", {}).get("schema")
    form_schema = content.get("multipart/form-data", {}).get("schema")
    base_body = valid(json_schema) if json_schema else None
    kind = "json" if json_schema else "form" if form_schema else None
    if kind == "form":
        base_body = {}

    for param in params:
        if param["in"] == "path":
            for value in (["a\x00b", "a\rb"] if resolve(param.get("schema", {})).get("type")
                          == "string" else ["99999999999999999999", "2147483648"]):
                yield (f"path {param['name']}={value!r}", url({**path_values,
                                                               param["name"]: value}),
                       base_query, kind, base_body)
        elif param["in"] == "query":
            for value in hostile(param.get("schema", {})):
                if param["name"] in CAPPED and isinstance(value, int):
                    continue
                if isinstance(value, list):
                    value = value[0]
                value = {HUGE: "1e999999", NAN: "NaN"}.get(value, value)
                yield (f"query {param['name']}={value!r}", url(path_values),
                       {**base_query, param["name"]: str(value)}, kind, base_body)
    target = url(path_values)
    if json_schema:
        for field, schema in body_fields(json_schema):
            for value in hostile(schema):
                if value == "a\r\nBcc: x@example.com" and multi_line(schema):
                    continue  # long text keeps its line breaks
                yield (f"body {'.'.join(field)}={value!r}"[:120], target, base_query, "json",
                       with_value(base_body, field, value))
        yield "body nested 1000 deep", target, base_query, "raw", DEEP
        yield ("body with a key holding NUL", target, base_query, "json",
               {**base_body, "a\x00b": "x"} if isinstance(base_body, dict) else base_body)
    if form_schema:
        for name, schema in resolve(form_schema).get("properties", {}).items():
            if resolve(schema).get("format") == "binary":
                continue
            yield f"form {name}=NUL", target, base_query, "form", {name: "a\x00b"}


def send(client, method, url, query, kind, body, headers):
    kwargs = {"method": method, "query_string": query, "headers": headers}
    if kind == "json":
        kwargs.update(data=json_text(body), content_type="application/json")
    elif kind == "raw":
        kwargs.update(data=body, content_type="application/json")
    elif kind == "form":
        kwargs.update(data=body, content_type="multipart/form-data")
    return client.open(url, **kwargs)


@pytest.fixture
def role_headers(app):
    return {role: {"Authorization": f"Bearer {token}"} for role, token in signed_in(APP).items()}


def _shape(response, op: dict) -> bool:
    """The one error shape, {"error", "code", "details"?}, plus what the operation declares
    for this status (a public verification's 404 adds `valid: false`); or a page, where the
    operation declares an HTML answer for the status."""
    declared = (op.get("responses", {}).get(str(response.status_code)) or {}).get("content", {})
    if response.mimetype == "text/html":
        return "text/html" in declared
    try:
        body = json.loads(response.get_data(as_text=True))
    except ValueError:
        return False
    schema = resolve(declared.get("application/json", {}).get("schema", {}))
    allowed = {"error", "code", "details"} | set(schema.get("properties", {}))
    return (isinstance(body, dict) and {"error", "code"} <= set(body) <= allowed
            and isinstance(body["error"], str) and isinstance(body["code"], str))


@pytest.mark.parametrize("method,path,op", OPERATIONS,
                         ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_hostile_input_is_refused(method, path, op, role_headers):
    client = APP.test_client()
    failures = []
    for label, url, query, kind, body in cases(method, path, op):
        for role in ("admin", "instructor", "student"):
            response = send(client, method, url, query, kind, body, role_headers[role])
            if response.status_code != 403:
                break
        status = response.status_code
        if not 400 <= status < 500:
            failures.append(f"{label}: {status} {response.get_data(as_text=True)[:200]}")
        elif status in (401, 403):
            failures.append(f"{label}: {status}, so the input checks were never reached")
        elif str(status) not in op.get("responses", {}):
            failures.append(f"{label}: {status}, which the document does not declare")
        elif not _shape(response, op):
            failures.append(f"{label}: {status} not in the error shape: "
                            f"{response.get_data(as_text=True)[:200]}")
    assert not failures, f"{method} {path}:\n" + "\n".join(failures)
