"""The production configuration's security headers and CORS, checked on an app built exactly
as production builds it (a subprocess with APP_ENV=production: the configuration is read from
the environment when it is imported)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.support.gunicorn_server import REPO_ROOT, base_env
from tests.support.signing import signing_settings

STUDENTS, ADMINS = "https://learn.example.com", "https://admin.example.com"

PROBE = f"""
import json
from app import create_app

app = create_app("production")
client = app.test_client()
https = {{"base_url": "https://api.example.com"}}
answers = {{
    "secure": client.get("/api/v1/health", **https),
    "plain": client.get("/api/v1/public/get-categories", base_url="http://api.example.com"),
    "preflight": client.options("/api/v1/public/get-courses", headers={{
        "Origin": "{ADMINS}", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Authorization"}}, **https),
    "student_spa": client.get("/api/v1/health", headers={{"Origin": "{STUDENTS}"}}, **https),
    "stranger": client.get("/api/v1/health", headers={{"Origin": "https://evil.example"}},
                           **https),
}}
print(json.dumps({{name: {{"status": r.status_code, "headers": dict(r.headers)}}
                  for name, r in answers.items()}}))
"""


def test_production_sends_hsts_csp_and_cors_for_the_two_spas_only(tmp_path):
    env = base_env(APP_ENV="production", DATABASE_URL=f"sqlite:///{tmp_path / 'p.db'}",
                   SESSION_SECRET="s" * 32, JWT_SECRET_KEY="j" * 48,
                   PUBLIC_BASE_URL="https://api.example.com",
                   FRONTEND_URL_STUDENTS=STUDENTS, FRONTEND_URL_ADMIN=ADMINS,
                   LOG_LEVEL="ERROR", **signing_settings())
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])

    secure = answers["secure"]["headers"]
    assert answers["secure"]["status"] == 200
    hsts = secure["Strict-Transport-Security"]
    assert "includeSubDomains" in hsts
    assert int(hsts.split("max-age=")[1].split(";")[0]) >= 31536000
    assert "default-src 'none'" in secure["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in secure["Content-Security-Policy"]
    assert secure["X-Frame-Options"] == "DENY"
    assert secure["X-Content-Type-Options"] == "nosniff"
    assert secure["Referrer-Policy"] == "no-referrer"
    assert "Access-Control-Allow-Origin" not in secure  # no Origin, no CORS headers

    # Plain HTTP is sent to HTTPS before anything else happens.
    plain = answers["plain"]
    assert plain["status"] in (301, 302)
    assert plain["headers"]["Location"].startswith("https://api.example.com/api/v1/public/")

    # CORS: the two SPAs, with credentials in the Authorization header; nobody else.
    preflight = answers["preflight"]["headers"]
    assert preflight["Access-Control-Allow-Origin"] == ADMINS
    assert "authorization" in preflight["Access-Control-Allow-Headers"].lower()
    assert answers["student_spa"]["headers"]["Access-Control-Allow-Origin"] == STUDENTS
    assert "Access-Control-Allow-Origin" not in answers["stranger"]["headers"]
