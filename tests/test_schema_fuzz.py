"""Schema fuzzing: schemathesis generates requests for every operation of
/api/v1/openapi.json, as a student and an admin, and for the public ones as a guest. No answer may be a 500; every
answer must conform to the documented status codes, content types and schemas; every error
must be in the one error shape.

Marked `fuzz`: .ci/run runs it in a pass of its own, beside the PostgreSQL and SQLite passes.
EXAMPLES per operation and role is what CI affords (the environment's LMS_FUZZ_EXAMPLES
overrides it: fewer for a quick local look, more for a deeper search).
"""
from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from routes.docs import api_document
from tests.support.fuzz_app import fuzz_app, signed_in

pytestmark = pytest.mark.fuzz

# Per operation and role. 2 missed a live-session 500 that 30 find in seconds; 30 over the
# whole document take about as long as the PostgreSQL pass beside it (measured: 655 s wall,
# 237 s CPU, on this 2-core machine beside a PostgreSQL pass of 725 s and other work).
EXAMPLES = int(os.environ.get("LMS_FUZZ_EXAMPLES", "30"))
APP = fuzz_app()
with APP.app_context():
    DOCUMENT = api_document()
    SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
SCHEMA.app = APP
PUBLIC = SCHEMA.include(operation_id=[
    op["operationId"] for item in DOCUMENT["paths"].values() for method, op in item.items()
    if isinstance(op, dict) and "operationId" in op and not op.get("security")])
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def tokens(app):
    return {"guest": None, **signed_in(APP, ("student", "admin"))}


def _run(case, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = case.call(headers=headers)
    assert response.status_code != 500, (case.method, case.formatted_path, response.text[:500])
    if response.status_code >= 400 and "json" in response.headers.get("Content-Type", ""):
        body = response.json()
        assert isinstance(body, dict) and {"error", "code"} <= set(body), body
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("role", ["student", "admin"])
@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation(case, role, tokens):
    _run(case, tokens[role])


# Guests fuzz the operations that need no token (on the others a guest gets 401 whatever it
# sends, which tests/test_authz_matrix.py checks for every route).
@PUBLIC.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_public_operation_as_a_guest(case, tokens):
    _run(case, None)
