"""Phone codes (Twilio Verify), Google sign-in and password-reset e-mail (SMTP, SendGrid)
through the HTTP API, with the real SDKs talking to local stand-ins on 127.0.0.1
(tests/support/standins.py): only the network edge is replaced, never our own code.

Each gateway gets its own app (create_app("testing", overrides=...)) on the session app's
database. For in-memory SQLite a second app has its own empty database, so the schema is
created there and dropped afterwards; otherwise the autouse clean_state fixture empties it.

Rate limits: Flask-Limiter's `init_app` with RATELIMIT_ENABLED=False sets `enabled` on the
shared module-level limiter, which switches limits off for every app in the process (the
session app included), so these apps keep limits on and raise the per-route ones instead.
"""
from __future__ import annotations

import hashlib
import re
import time

import pytest
from sqlalchemy import select

from app import create_app
from models import PasswordResetToken, PhoneVerification, User
from models import db
from tests.support.assertions import count
from tests.support.standins import (
    GoogleCerts,
    SendGridStub,
    TwilioVerifyStub,
    closed_url,
    new_rsa_key_pem,
    smtp_server,
)

API = "/api/v1/auth"
PASSWORD = "Passw0rd!"
RELAXED_LIMITS = {name: "1000 per minute" for name in (
    "RATE_LIMIT_REGISTER", "RATE_LIMIT_LOGIN", "RATE_LIMIT_REFRESH",
    "RATE_LIMIT_PASSWORD_RESET_REQUEST", "RATE_LIMIT_PASSWORD_RESET_VERIFY")}
RESET_ANSWER = {"message": "If an account exists for this e-mail, a reset link has been sent"}


# --- helpers ------------------------------------------------------------------------------------

def _memory_sqlite(uri: str) -> bool:
    return uri in ("sqlite://", "sqlite:///:memory:") or ":memory:" in uri or "mode=memory" in uri


@pytest.fixture
def gateway_app(app):
    """gateway_app(**overrides) -> a testing app on the session app's database."""
    built = []

    def _build(**overrides):
        uri = app.config["SQLALCHEMY_DATABASE_URI"]
        config = {"SQLALCHEMY_DATABASE_URI": uri, "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"],
                  **RELAXED_LIMITS, **overrides}
        gw = create_app("testing", overrides=config)
        separate = _memory_sqlite(uri)
        if separate:
            with gw.app_context():
                db.create_all()
        built.append((gw, separate))
        return gw

    yield _build
    for gw, separate in built:
        with gw.app_context():
            db.session.remove()
            if separate:
                db.drop_all()
            db.engine.dispose()


def make_user(gw, *, email: str, role: str = "student", password: str | None = PASSWORD,
              **fields) -> int:
    values = {"email": email, "first_name": "Test", "last_name": role.capitalize(),
              "role": role, "is_active": True, "is_email_verified": True, **fields}
    with gw.app_context():
        user = User(**values)
        if password:
            user.set_password(password)
        db.session.add(user)
        db.session.commit()
        return user.id


def user_row(gw, email: str) -> dict | None:
    """The user's columns as a dict (None if absent), read in `gw`'s database."""
    with gw.app_context():
        user = db.session.scalar(select(User).where(User.email == email))
        if user is None:
            return None
        return {c.key: getattr(user, c.key) for c in User.__mapper__.column_attrs}


def phone_rows(gw, phone: str) -> list[dict]:
    with gw.app_context():
        rows = db.session.scalars(select(PhoneVerification)
                                  .where(PhoneVerification.phone_number == phone)
                                  .order_by(PhoneVerification.id)).all()
        return [{"provider": r.provider, "verified_at": r.verified_at,
                 "consumed_at": r.consumed_at, "code_hash": r.code_hash} for r in rows]


def reset_rows(gw, user_id: int) -> list[dict]:
    with gw.app_context():
        rows = db.session.scalars(select(PasswordResetToken)
                                  .where(PasswordResetToken.user_id == user_id)
                                  .order_by(PasswordResetToken.id)).all()
        return [{"token_hash": r.token_hash, "used_at": r.used_at} for r in rows]


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    assert set(body) <= {"error", "code", "details"}
    return body


def assert_tokens(body: dict, email: str) -> None:
    assert body["token_type"] == "Bearer"
    assert body["access_token"] and body["refresh_token"]
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert body["user"]["email"] == email


def login(client, email: str, password: str):
    return client.post(f"{API}/login", json={"email": email, "password": password})


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# --- Twilio Verify ------------------------------------------------------------------------------

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token"
VERIFY_SID = "VA" + "fedcba9876543210" * 2
PHONE = "+14155550123"
NEW_ACCOUNT = {"email": "grace.hopper@example.com", "password": "C0bolRocks!",
               "first_name": "Grace", "last_name": "Hopper"}


def twilio_config(base: str, **extra) -> dict:
    return {"SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": TWILIO_SID,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "TWILIO_VERIFY_SERVICE_SID": VERIFY_SID,
            "TWILIO_API_BASE": base, **extra}


@pytest.fixture
def twilio():
    stub = TwilioVerifyStub(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN,
                            default_code="482915").start()
    yield stub
    stub.stop()


@pytest.fixture
def twilio_app(gateway_app, twilio):
    return gateway_app(**twilio_config(twilio.url))


def test_send_otp_asks_twilio_verify_for_an_sms(twilio_app, twilio):
    response = twilio_app.test_client().post(f"{API}/register/send-otp",
                                             json={"phone_number": PHONE})

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"message": "A verification code has been sent"}
    assert len(twilio.requests) == 1
    sent = twilio.requests[0]
    assert sent.method == "POST"
    assert sent.path == f"/v2/Services/{VERIFY_SID}/Verifications"
    assert sent.form == {"To": PHONE, "Channel": "sms"}
    assert sent.basic_auth == (TWILIO_SID, TWILIO_TOKEN)
    assert PHONE in twilio.pending
    # The send is recorded (for the per-phone limit), not yet verified; Twilio keeps the code.
    assert phone_rows(twilio_app, PHONE) == [
        {"provider": "twilio", "verified_at": None, "consumed_at": None, "code_hash": None}]


def test_register_with_the_right_code_creates_a_verified_account(twilio_app, twilio):
    client = twilio_app.test_client()
    assert client.post(f"{API}/register/send-otp", json={"phone_number": PHONE}).status_code == 200

    response = client.post(f"{API}/register/verify-otp",
                           json={"phone_number": PHONE, "code": twilio.code_for(PHONE),
                                 **NEW_ACCOUNT})

    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["message"] == "Account created"
    assert_tokens(body, NEW_ACCOUNT["email"])
    assert body["user"]["phone_number"] == PHONE
    assert body["user"]["is_phone_verified"] is True
    assert body["user"]["role"] == "student"
    check = twilio.requests_to("/VerificationCheck")
    assert len(check) == 1
    assert check[0].form == {"To": PHONE, "Code": "482915"}
    assert check[0].basic_auth == (TWILIO_SID, TWILIO_TOKEN)

    row = user_row(twilio_app, NEW_ACCOUNT["email"])
    assert row is not None and row["id"] == body["user"]["id"]
    assert row["phone_number"] == PHONE and row["is_phone_verified"] is True
    assert row["first_name"] == "Grace" and row["last_name"] == "Hopper"
    verifications = phone_rows(twilio_app, PHONE)
    assert len(verifications) == 1
    assert verifications[0]["verified_at"] is not None
    assert verifications[0]["consumed_at"] is not None  # used by this registration

    # The tokens work, and the password set here logs in.
    profile = client.get(f"{API}/profile", headers=bearer(body["access_token"]))
    assert profile.status_code == 200
    assert profile.get_json()["user"]["id"] == row["id"]
    assert login(client, NEW_ACCOUNT["email"], NEW_ACCOUNT["password"]).status_code == 200


def test_register_with_a_wrong_code_is_refused_and_creates_nothing(twilio_app, twilio):
    client = twilio_app.test_client()
    assert client.post(f"{API}/register/send-otp", json={"phone_number": PHONE}).status_code == 200

    response = client.post(f"{API}/register/verify-otp",
                           json={"phone_number": PHONE, "code": "000000", **NEW_ACCOUNT})

    body = assert_error(response, 422, "otp_invalid")
    assert "code" in body["details"]
    assert len(twilio.requests_to("/VerificationCheck")) == 1
    assert PHONE in twilio.pending  # Twilio still waits for the right code
    assert user_row(twilio_app, NEW_ACCOUNT["email"]) is None
    assert count(twilio_app, User) == 0
    assert [r["verified_at"] for r in phone_rows(twilio_app, PHONE)] == [None]

    # The right code still works afterwards.
    retry = client.post(f"{API}/register/verify-otp",
                        json={"phone_number": PHONE, "code": twilio.code_for(PHONE),
                              **NEW_ACCOUNT})
    assert retry.status_code == 201, retry.get_data(as_text=True)
    assert count(twilio_app, User) == 1


def test_a_code_for_a_number_twilio_has_no_verification_for_is_invalid(twilio_app, twilio):
    """Twilio answers 404 (error 20404) once a verification expired or was approved."""
    response = twilio_app.test_client().post(
        f"{API}/register/verify-otp",
        json={"phone_number": PHONE, "code": "482915", **NEW_ACCOUNT})

    assert_error(response, 422, "otp_invalid")
    assert len(twilio.requests_to("/VerificationCheck")) == 1
    assert count(twilio_app, User) == 0
    assert phone_rows(twilio_app, PHONE) == []


def test_twilio_unreachable_is_503(gateway_app):
    down = gateway_app(**twilio_config(closed_url()))
    client = down.test_client()

    sent = client.post(f"{API}/register/send-otp", json={"phone_number": PHONE})
    checked = client.post(f"{API}/register/verify-otp",
                          json={"phone_number": PHONE, "code": "482915", **NEW_ACCOUNT})
    verified = client.post(f"{API}/verify-otp", json={"phone_number": PHONE, "code": "482915"})

    for response in (sent, checked, verified):
        body = assert_error(response, 503, "service_unavailable")
        assert "SMS" in body["error"]
    assert phone_rows(down, PHONE) == []
    assert count(down, User) == 0


def test_two_step_flow_verify_then_register(gateway_app, twilio):
    gw = gateway_app(**twilio_config(twilio.url, OTP_REQUIRED=True))
    client = gw.test_client()
    assert client.post(f"{API}/send-token", json={"phone_number": PHONE}).status_code == 200

    verified = client.post(f"{API}/verify-otp",
                           json={"phone_number": PHONE, "code": twilio.code_for(PHONE)})
    assert verified.status_code == 200, verified.get_data(as_text=True)
    assert verified.get_json() == {"message": "Phone number verified"}
    rows = phone_rows(gw, PHONE)
    assert len(rows) == 1 and rows[0]["verified_at"] is not None
    assert rows[0]["consumed_at"] is None
    assert PHONE not in twilio.pending  # approved at Twilio

    response = client.post(f"{API}/register", json={**NEW_ACCOUNT, "phone_number": PHONE})

    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["message"] == "User created successfully"
    assert body["user"]["email"] == NEW_ACCOUNT["email"]
    assert body["user"]["phone_number"] == PHONE
    assert body["user"]["is_phone_verified"] is True
    row = user_row(gw, NEW_ACCOUNT["email"])
    assert row["id"] == body["user"]["id"] and row["is_phone_verified"] is True
    assert phone_rows(gw, PHONE)[0]["consumed_at"] is not None

    # The verification was used up: it cannot open a second account.
    again = client.post(f"{API}/register",
                        json={**NEW_ACCOUNT, "email": "second@example.com",
                              "phone_number": PHONE})
    assert_error(again, 409, "phone_taken")
    assert count(gw, User) == 1


def test_register_with_otp_required_refuses_an_unverified_phone(gateway_app, twilio):
    gw = gateway_app(**twilio_config(twilio.url, OTP_REQUIRED=True))
    client = gw.test_client()
    # A code was sent but never checked.
    assert client.post(f"{API}/register/send-otp", json={"phone_number": PHONE}).status_code == 200

    response = client.post(f"{API}/register", json={**NEW_ACCOUNT, "phone_number": PHONE})

    body = assert_error(response, 422, "phone_not_verified")
    assert "not been verified" in body["details"]["phone_number"]
    without_phone = client.post(f"{API}/register", json=NEW_ACCOUNT)
    body = assert_error(without_phone, 422, "phone_not_verified")
    assert body["details"] == {"phone_number": "is required"}
    assert user_row(gw, NEW_ACCOUNT["email"]) is None
    assert count(gw, User) == 0
    assert twilio.requests_to("/VerificationCheck") == []


# --- Google sign-in ------------------------------------------------------------------------------

@pytest.fixture
def google():
    certs = GoogleCerts(client_id="student-client").start()
    yield certs
    certs.stop()


@pytest.fixture
def google_app(gateway_app, google):
    return gateway_app(GOOGLE_CLIENT_ID="student-client", GOOGLE_ADMIN_CLIENT_ID="admin-client",
                       GOOGLE_CERTS_URL=google.certs_url)


def google_login(gw, token: str, client_type: str | None = None):
    body = {"id_token": token}
    if client_type:
        body["client_type"] = client_type
    return gw.test_client().post(f"{API}/google", json=body)


def test_first_google_login_creates_a_student(google_app, google):
    response = google_login(google_app, google.make_token())

    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_tokens(body, "ada.lovelace@gmail.com")
    user = body["user"]
    assert user["role"] == "student"
    assert user["first_name"] == "Ada" and user["last_name"] == "Lovelace"
    assert user["is_email_verified"] is True
    assert user["has_password"] is False
    assert any(r.path == "/certs" for r in google.requests)

    row = user_row(google_app, "ada.lovelace@gmail.com")
    assert row["id"] == user["id"]
    assert row["google_sub"] == "1098765432123456789"
    assert row["is_email_verified"] is True and row["password_hash"] is None
    assert row["last_login_at"] is not None
    profile = google_app.test_client().get(f"{API}/profile", headers=bearer(body["access_token"]))
    assert profile.status_code == 200 and profile.get_json()["user"]["id"] == user["id"]


def test_second_google_login_is_the_same_user(google_app, google):
    first = google_login(google_app, google.make_token())
    assert first.status_code == 200
    # Same Google account (matched by `sub`); a later login does not overwrite the profile.
    second = google_login(google_app, google.make_token({"given_name": "Augusta"}))

    assert second.status_code == 200, second.get_data(as_text=True)
    assert second.get_json()["user"]["id"] == first.get_json()["user"]["id"]
    assert second.get_json()["user"]["first_name"] == "Ada"
    assert count(google_app, User) == 1
    assert user_row(google_app, "ada.lovelace@gmail.com")["google_sub"] == "1098765432123456789"


def test_google_login_links_an_existing_password_account_by_email(google_app, google):
    user_id = make_user(google_app, email="linked@example.com", is_email_verified=False)

    response = google_login(google_app, google.make_token({"email": "Linked@Example.com",
                                                           "sub": "2222"}))

    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["user"]["id"] == user_id
    assert body["user"]["has_password"] is True
    assert count(google_app, User) == 1
    row = user_row(google_app, "linked@example.com")
    assert row["google_sub"] == "2222" and row["is_email_verified"] is True
    assert row["first_name"] == "Test"  # the existing profile is kept
    # The password still works.
    assert login(google_app.test_client(), "linked@example.com", PASSWORD).status_code == 200


def test_google_login_with_an_unverified_email_is_403(google_app, google):
    response = google_login(google_app, google.make_token({"email_verified": False}))

    assert_error(response, 403, "google_email_unverified")
    assert count(google_app, User) == 0


@pytest.mark.parametrize("case", ["wrong_audience", "admin_audience_on_student", "expired",
                                  "unknown_kid", "forged_signature", "wrong_issuer",
                                  "not_a_jwt"])
def test_google_login_refuses_bad_tokens(google_app, google, case):
    now = int(time.time())
    token = {
        "wrong_audience": lambda: google.make_token({"aud": "someone-elses-client"}),
        "admin_audience_on_student": lambda: google.make_token({"aud": "admin-client"}),
        "expired": lambda: google.make_token({"iat": now - 7200, "exp": now - 3600}),
        "unknown_kid": lambda: google.make_token(kid="not-served", key=new_rsa_key_pem()),
        # The served kid, signed by another key.
        "forged_signature": lambda: google.make_token(key=new_rsa_key_pem()),
        "wrong_issuer": lambda: google.make_token({"iss": "https://evil.example.com"}),
        "not_a_jwt": lambda: "not.a.token",
    }[case]()

    response = google_login(google_app, token)

    body = assert_error(response, 401, "google_token_invalid")
    assert body["error"] == "The Google token is invalid or expired"
    assert count(google_app, User) == 0


def test_google_admin_login_refuses_non_admins(google_app, google):
    student_id = make_user(google_app, email="student@example.com")
    for email in ("student@example.com", "stranger@example.com"):
        token = google.make_token({"aud": "admin-client", "email": email, "sub": f"sub-{email}"})

        response = google_login(google_app, token, client_type="admin")

        assert_error(response, 403, "not_admin")
    assert count(google_app, User) == 1
    row = user_row(google_app, "student@example.com")
    assert row["id"] == student_id and row["google_sub"] is None


def test_google_admin_login_for_an_existing_admin(google_app, google):
    admin_id = make_user(google_app, email="admin@example.com", role="admin")
    token = google.make_token({"aud": "admin-client", "email": "admin@example.com",
                               "sub": "admin-sub"})

    response = google_login(google_app, token, client_type="admin")

    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_tokens(body, "admin@example.com")
    assert body["user"]["id"] == admin_id and body["user"]["role"] == "admin"
    assert user_row(google_app, "admin@example.com")["google_sub"] == "admin-sub"
    # A student-audience token is not accepted on the admin client.
    student_token = google.make_token({"email": "admin@example.com", "sub": "admin-sub"})
    assert_error(google_login(google_app, student_token, client_type="admin"), 401,
                 "google_token_invalid")


def test_google_not_configured_is_503(gateway_app, google):
    gw = gateway_app(GOOGLE_CLIENT_ID=None, GOOGLE_ADMIN_CLIENT_ID=None,
                     GOOGLE_CERTS_URL=google.certs_url)
    for client_type in ("student", "admin"):
        response = google_login(gw, google.make_token(), client_type=client_type)
        assert_error(response, 503, "google_not_configured")
    assert google.requests == []
    assert count(gw, User) == 0


def test_google_certs_unreachable_is_503(gateway_app, google):
    gw = gateway_app(GOOGLE_CLIENT_ID="student-client", GOOGLE_CERTS_URL=closed_url() + "/certs")

    response = google_login(gw, google.make_token())

    assert_error(response, 503, "service_unavailable")
    assert count(gw, User) == 0


# --- password reset by e-mail: SMTP ---------------------------------------------------------------

@pytest.fixture
def smtp():
    sink = smtp_server()
    yield sink
    sink.stop()


def smtp_config(port: int) -> dict:
    # TESTING=True makes Flask-Mail suppress sending unless MAIL_SUPPRESS_SEND is False.
    return {"MAIL_BACKEND": "smtp", "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": port,
            "MAIL_USE_TLS": False, "MAIL_USE_SSL": False, "MAIL_SUPPRESS_SEND": False}


@pytest.fixture
def smtp_app(gateway_app, smtp):
    return gateway_app(**smtp_config(smtp.port))


def reset_link_base(gw) -> str:
    return gw.config.get("PASSWORD_RESET_URL") or (
        gw.config["FRONTEND_URL_STUDENTS"].rstrip("/") + "/reset-password")


def token_from_text(gw, text: str) -> str:
    found = re.findall(re.escape(reset_link_base(gw)) + r"/([A-Za-z0-9_\-]+)", text)
    assert len(found) == 1, text
    return found[0]


def mail_text(received) -> str:
    return received.message.get_body(preferencelist=("plain",)).get_content()


def request_reset(gw, email: str):
    return gw.test_client().post(f"{API}/password-reset/request", json={"email": email})


def test_password_reset_by_smtp_end_to_end(smtp_app, smtp):
    email = "reset.me@example.com"
    user_id = make_user(smtp_app, email=email, first_name="Reset")
    client = smtp_app.test_client()
    before = login(client, email, PASSWORD)
    assert before.status_code == 200
    old_access, old_refresh = before.get_json()["access_token"], before.get_json()["refresh_token"]

    response = request_reset(smtp_app, email)

    assert response.status_code == 200
    assert response.get_json() == RESET_ANSWER
    assert len(smtp.messages) == 1
    received = smtp.messages[0]
    assert received.rcpt_tos == [email]
    assert received.mail_from == smtp_app.config["MAIL_DEFAULT_SENDER"]
    assert received.message["To"] == email
    assert received.message["Subject"] == f"Reset your {smtp_app.config['APP_NAME']} password"
    text = mail_text(received)
    assert text.startswith("Hello Reset,")
    token = token_from_text(smtp_app, text)
    rows = reset_rows(smtp_app, user_id)
    assert rows == [{"token_hash": hashlib.sha256(token.encode()).hexdigest(), "used_at": None}]

    new_password = "N3wSecret!pass"
    reset = client.post(f"{API}/password-reset/verify",
                        json={"token": token, "new_password": new_password})

    assert reset.status_code == 200, reset.get_data(as_text=True)
    assert reset.get_json() == {"message": "Your password has been reset; log in with the new one"}
    assert reset_rows(smtp_app, user_id)[0]["used_at"] is not None
    assert user_row(smtp_app, email)["tokens_valid_after"] is not None
    assert_error(login(client, email, PASSWORD), 401, "invalid_credentials")
    after = login(client, email, new_password)
    assert after.status_code == 200 and after.get_json()["user"]["id"] == user_id
    # Tokens issued before the reset are refused; the new ones work.
    assert_error(client.get(f"{API}/profile", headers=bearer(old_access)), 401, "token_revoked")
    assert_error(client.post(f"{API}/refresh", headers=bearer(old_refresh)), 401,
                 "token_revoked")
    fresh = client.get(f"{API}/profile", headers=bearer(after.get_json()["access_token"]))
    assert fresh.status_code == 200 and fresh.get_json()["user"]["id"] == user_id

    # The link works once.
    reused = client.post(f"{API}/password-reset/verify",
                         json={"token": token, "new_password": "An0therSecret!"})
    body = assert_error(reused, 422, "reset_token_invalid")
    assert body["details"] == {"token": "invalid or expired"}
    assert login(client, email, new_password).status_code == 200
    assert len(smtp.messages) == 1


def test_reset_by_link_alias_with_a_fresh_token(smtp_app, smtp):
    email = "alias@example.com"
    user_id = make_user(smtp_app, email=email)
    assert request_reset(smtp_app, email).status_code == 200
    first = token_from_text(smtp_app, mail_text(smtp.messages[0]))
    # A second request voids the first link.
    assert request_reset(smtp_app, email).status_code == 200
    assert len(smtp.messages) == 2
    token = token_from_text(smtp_app, mail_text(smtp.messages[1]))
    assert token != first
    client = smtp_app.test_client()

    response = client.post(f"{API}/reset-password/{token}", json={"password": "Al1asPassword"})

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"message": "Your password has been reset; log in with the new one"}
    assert all(row["used_at"] is not None for row in reset_rows(smtp_app, user_id))
    assert login(client, email, "Al1asPassword").status_code == 200
    assert_error(login(client, email, PASSWORD), 401, "invalid_credentials")
    stale = client.post(f"{API}/reset-password/{first}", json={"password": "Stal3Password"})
    assert_error(stale, 422, "reset_token_invalid")
    assert_error(client.post(f"{API}/reset-password/{token}", json={"password": "Ag4inPassword"}),
                 422, "reset_token_invalid")


def test_reset_request_for_an_unknown_email_answers_the_same_and_sends_nothing(smtp_app, smtp):
    user_id = make_user(smtp_app, email="known@example.com")
    known = request_reset(smtp_app, "known@example.com")
    unknown = request_reset(smtp_app, "nobody@example.com")

    assert unknown.status_code == known.status_code == 200
    assert unknown.get_json() == known.get_json() == RESET_ANSWER
    assert [m.rcpt_tos for m in smtp.messages] == [["known@example.com"]]
    assert count(smtp_app, PasswordResetToken) == 1
    assert len(reset_rows(smtp_app, user_id)) == 1


def test_flask_mail_settings_stay_per_app(gateway_app, app):
    """`mail` is one module-level Mail(); each app's settings live in app.extensions["mail"],
    so two apps with different servers each deliver to their own."""
    with smtp_server() as sink_a, smtp_server() as sink_b:
        app_a = gateway_app(**smtp_config(sink_a.port))
        app_b = gateway_app(**smtp_config(sink_b.port))
        assert app_a.extensions["mail"].port == sink_a.port
        assert app_b.extensions["mail"].port == sink_b.port
        assert app.extensions["mail"].port == app.config["MAIL_PORT"]  # the session app's
        make_user(app_a, email="a@example.com")
        make_user(app_b, email="b@example.com")

        assert request_reset(app_a, "a@example.com").status_code == 200
        assert request_reset(app_b, "b@example.com").status_code == 200

        assert [m.rcpt_tos for m in sink_a.messages] == [["a@example.com"]]
        assert [m.rcpt_tos for m in sink_b.messages] == [["b@example.com"]]


# --- password reset by e-mail: SendGrid -----------------------------------------------------------

@pytest.fixture
def sendgrid():
    stub = SendGridStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def sendgrid_app(gateway_app, sendgrid):
    return gateway_app(MAIL_BACKEND="sendgrid", SENDGRID_API_KEY="SG.test",
                       SENDGRID_API_HOST=sendgrid.url)


def test_password_reset_by_sendgrid(sendgrid_app, sendgrid):
    email = "grid@example.com"
    user_id = make_user(sendgrid_app, email=email)

    response = request_reset(sendgrid_app, email)

    assert response.status_code == 200
    assert response.get_json() == RESET_ANSWER
    assert len(sendgrid.requests) == 1
    sent = sendgrid.sent[0]
    assert sent.method == "POST" and sent.path == "/v3/mail/send"
    assert sent.headers["Authorization"] == "Bearer SG.test"
    payload = sent.json
    assert payload["personalizations"] == [{"to": [{"email": email}]}]
    assert payload["from"] == {"email": sendgrid_app.config["MAIL_DEFAULT_SENDER"]}
    assert payload["subject"] == f"Reset your {sendgrid_app.config['APP_NAME']} password"
    texts = [c["value"] for c in payload["content"] if c["type"] == "text/plain"]
    assert len(texts) == 1
    token = token_from_text(sendgrid_app, texts[0])
    assert reset_rows(sendgrid_app, user_id) == [
        {"token_hash": hashlib.sha256(token.encode()).hexdigest(), "used_at": None}]

    # The mailed token resets the password.
    client = sendgrid_app.test_client()
    reset = client.post(f"{API}/password-reset/verify",
                        json={"token": token, "new_password": "Gr1dPassword"})
    assert reset.status_code == 200, reset.get_data(as_text=True)
    assert login(client, email, "Gr1dPassword").status_code == 200


@pytest.mark.parametrize("failure", ["500", "unreachable"])
def test_sendgrid_failure_still_answers_200(gateway_app, sendgrid, failure):
    if failure == "500":
        sendgrid.fail_status = 500
        host = sendgrid.url
    else:
        host = closed_url()
    gw = gateway_app(MAIL_BACKEND="sendgrid", SENDGRID_API_KEY="SG.test",
                     SENDGRID_API_HOST=host)
    email = "unlucky@example.com"
    user_id = make_user(gw, email=email)

    known = request_reset(gw, email)
    unknown = request_reset(gw, "nobody@example.com")

    # Same answer as for an unknown address: a delivery failure reveals nothing.
    assert known.status_code == unknown.status_code == 200
    assert known.get_json() == unknown.get_json() == RESET_ANSWER
    assert len(sendgrid.sent) == (1 if failure == "500" else 0)
    if failure == "500":
        assert sendgrid.sent[0].json["personalizations"] == [{"to": [{"email": email}]}]
    rows = reset_rows(gw, user_id)
    assert len(rows) == 1 and rows[0]["used_at"] is None
    # Nothing is broken: the account is unchanged and the app keeps answering.
    client = gw.test_client()
    assert login(client, email, PASSWORD).status_code == 200
    assert client.get("/api/v1/health").status_code == 200
