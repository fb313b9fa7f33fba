"""Schema fuzzing: schemathesis generates requests for every operation of
/api/v1/openapi.json, as a guest, a student and an admin. No answer may be a 500; every
answer must conform to the documented status codes, content types and schemas; every error
must be in the one error shape.

Marked `fuzz`: .ci/run runs it in the PostgreSQL pass only (it is the slowest file).
"""
from __future__ import annotations

import pytest
import schemathesis
from flask_jwt_extended import create_access_token
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import create_app
from models import User, db
from routes.docs import api_document

pytestmark = pytest.mark.fuzz

EXAMPLES = 2  # per operation and role: bounded for CI
HIGH = "100000 per minute"

APP = create_app("testing", overrides={
    **{name: HIGH for name in (
        "RATE_LIMIT_REGISTER", "RATE_LIMIT_LOGIN", "RATE_LIMIT_REFRESH",
        "RATE_LIMIT_PASSWORD_RESET_REQUEST", "RATE_LIMIT_PASSWORD_RESET_VERIFY",
        "RATE_LIMIT_PUBLIC", "RATE_LIMIT_SEARCH", "RATE_LIMIT_CONTACT", "RATE_LIMIT_VERIFY",
        "RATE_LIMIT_PAYMENT_CREATE", "RATE_LIMIT_PAYMENT_VERIFY")},
    # Fuzzed text trips the injection checks on purpose; blocking the address would only
    # hide the rest of the run.
    "IP_BLOCK_MAX_UNSAFE_INPUTS": 10**9, "IP_BLOCK_MAX_ACCOUNTS": 10**9,
})
with APP.app_context():
    SCHEMA = schemathesis.openapi.from_dict(api_document())
SCHEMA.app = APP
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def tokens(app):
    """Fresh users per test (the suite empties every table after each test)."""
    with APP.app_context():
        if db.engine.url.render_as_string() == "sqlite://":
            db.create_all()  # an in-memory database of this app's own
        result = {"guest": None}
        for role in ("student", "admin"):
            email = f"fuzz-{role}@example.com"
            user = db.session.scalar(db.select(User).where(User.email == email))
            if user is None:
                user = User(email=email, role=role, first_name="Fuzz", last_name=role.title())
                user.set_password("Passw0rd!")
                db.session.add(user)
                db.session.commit()
            result[role] = create_access_token(user)
        db.session.remove()
    return result


def _run(case, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = case.call(headers=headers)
    assert response.status_code != 500, (case.method, case.formatted_path, response.text[:500])
    if response.status_code >= 400 and "json" in response.headers.get("Content-Type", ""):
        body = response.json()
        assert isinstance(body, dict) and {"error", "code"} <= set(body), body
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("role", ["guest", "student", "admin"])
@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation(case, role, tokens):
    _run(case, tokens[role])
