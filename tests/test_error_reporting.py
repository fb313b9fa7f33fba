"""Error reporting (utils/error_reporting.py): with SENTRY_DSN set, an unexpected error reaches
Sentry through the real sentry-sdk, posted to a local stand-in (tests/support/sentry_standin.py),
without the request's password, token or body; without it, the SDK is not even imported.

Each case runs in a subprocess: the SDK's client is global to a process, and the configuration
reads SENTRY_DSN from the environment when it is imported."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.support.gunicorn_server import REPO_ROOT, base_env
from tests.support.sentry_standin import SentryStub

PASSWORD, TOKEN = "Hunter2-s3cret-passw0rd", "eyJhbGciOiJIUzI1NiJ9.secret-token-value.sig"

PROBE = f"""
import json, sys
from app import create_app
from models import db
from tests.support import probe_routes

app = create_app("testing", overrides={{"SQLALCHEMY_DATABASE_URI": "sqlite://"}})
app.register_blueprint(probe_routes.bp, url_prefix="/api/v1/_probe")
with app.app_context():
    db.create_all()
client = app.test_client()
failed = client.post("/api/v1/_probe/boom", json={{"password": "{PASSWORD}"}},
                     headers={{"Authorization": "Bearer {TOKEN}", "X-Request-ID": "sentry-1"}})
fine = client.get("/api/v1/health")
loaded = "sentry_sdk" in sys.modules
if loaded:
    import sentry_sdk
    sentry_sdk.flush(timeout=10)
print(json.dumps({{"failed": failed.status_code, "body": failed.get_json(),
                  "fine": fine.status_code, "sdk_loaded": loaded}}))
"""


def _run(**settings: str) -> dict:
    env = base_env(**settings)
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_an_unexpected_error_reaches_sentry_without_secrets():
    with SentryStub() as sentry:
        outcome = _run(SENTRY_DSN=sentry.dsn, SENTRY_ENVIRONMENT="staging")
        events = sentry.events()
        raw = b"".join(sentry.envelopes)

    # The client's answer is the usual generic 500, whatever Sentry does.
    assert outcome["failed"] == 500 and outcome["fine"] == 200 and outcome["sdk_loaded"]
    assert outcome["body"] == {"error": "An unexpected error occurred", "code": "internal_error"}
    assert len(events) == 1, events  # the failing request only, not the healthy one
    event = events[0]
    assert event["environment"] == "staging"
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == "secret internal detail"
    assert event["request"]["url"].endswith("/api/v1/_probe/boom")
    assert event["request"]["method"] == "POST"
    # Nothing that could carry a secret left the process.
    for secret in (PASSWORD, TOKEN, "secret-token-value"):
        assert secret.encode() not in raw
    headers = {name.lower(): value for name, value in event["request"]["headers"].items()}
    assert headers["x-request-id"] == "sentry-1"  # what ties the event to the app's log line
    assert headers["authorization"] == "[Filtered]"
    assert event["request"].get("data") in (None, "", {}), event["request"]
    for frame in exception["stacktrace"]["frames"]:
        assert "vars" not in frame


def test_without_a_dsn_the_sdk_is_not_loaded():
    outcome = _run(SENTRY_DSN="")

    assert outcome == {"failed": 500, "fine": 200, "sdk_loaded": False,
                       "body": {"error": "An unexpected error occurred",
                                "code": "internal_error"}}
