"""Accounts and sessions as an attacker tries them (issue 23): a lockout strangers cannot use as
a weapon, refresh tokens that rotate and betray their reuse, logout that ends a login with
either token, and answers that do not tell known e-mails from unknown ones."""
from __future__ import annotations

import re
from datetime import timedelta

from flask_jwt_extended import decode_token
from sqlalchemy import select

from models import (
    AuditLog,
    BackgroundJob,
    LoginSession,
    LoginThrottle,
    LoginToken,
    PasswordResetToken,
    RevokedToken,
    TrustedSource,
    User,
    db,
)
from services import jobs
from tests.support.assertions import count, error, fetch, ok
from tests.support.concurrency import fire_together
from tests.support.queries import recorded_statements
from utils.helpers import utcnow

API = "/api/v1"
PASSWORD = "Passw0rd!"
WRONG = "Wr0ngpassword"


def addr(n: int) -> dict:
    return {"REMOTE_ADDR": f"203.0.113.{n}"}


def login(client, email, password=PASSWORD, ip=1, **fields):
    return client.post(f"{API}/auth/login", json={"email": email, "password": password,
                                                  **fields}, environ_base=addr(ip))


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def email_of(app, user_id):
    return fetch(app, User, User.id == user_id).email


def user_in(app) -> int:
    """A student in `app`'s own database (postgres_app may be a scratch database, which the
    make_user fixture, bound to the suite's app, does not write to)."""
    with app.app_context():
        user = User(email="racer@example.com", first_name="Ra", last_name="Cer", role="student",
                    is_active=True, is_email_verified=True)
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
        return user.id


# --- lockout per account and source -------------------------------------------------------------

def test_failures_from_five_other_addresses_do_not_lock_a_known_device_or_address(
        client, app, make_user):
    user_id = make_user(email="victim@example.com")
    first = ok(login(client, "victim@example.com", ip=1))
    device = first["device_token"]
    assert len(device) >= 40
    # The device token is kept as a keyed hash only.
    with app.app_context():
        hashes = set(db.session.scalars(select(TrustedSource.source_hash).where(
            TrustedSource.user_id == user_id)))
        kinds = sorted(db.session.scalars(select(TrustedSource.kind)))
    assert kinds == ["address", "device"] and device not in hashes
    assert all(len(h) == 64 for h in hashes)

    # A stranger tries one password from each of five addresses: the fifth locks the account
    # for the sources it does not trust.
    answers = [login(client, "victim@example.com", WRONG, ip=n) for n in range(10, 15)]
    for answer in answers[:4]:
        error(answer, 401, "invalid_credentials")
    error(answers[4], 423, "account_locked")
    assert fetch(app, User, User.id == user_id).locked_until > utcnow() + timedelta(minutes=29)
    # A sixth, new address is refused even with the right password ...
    refused = login(client, "victim@example.com", ip=20)
    error(refused, 423, "account_locked")
    assert "access_token" not in refused.json and int(refused.headers["Retry-After"]) > 1700
    # ... while the known device (from an address never seen) and the known address sign in.
    on_device = ok(login(client, "victim@example.com", ip=30, device_token=device))
    assert on_device["device_token"] == device and on_device["user"]["id"] == user_id
    on_address = ok(login(client, "victim@example.com", ip=1))
    assert on_address["access_token"] and on_address["device_token"] != device
    # The stranger's lock stands: signing in elsewhere did not lift it.
    error(login(client, "victim@example.com", ip=21), 423, "account_locked")


def test_a_locked_source_is_refused_while_a_known_source_signs_in(client, app, make_user):
    make_user(email="target@example.com")
    device = ok(login(client, "target@example.com", ip=1))["device_token"]
    # The known device mistypes five times: it locks itself out, and nobody else.
    statuses = [login(client, "target@example.com", WRONG, ip=1, device_token=device).status_code
                for _ in range(5)]
    assert statuses == [401] * 4 + [423]
    locked = login(client, "target@example.com", ip=1, device_token=device)
    error(locked, 423, "account_locked")
    with app.app_context():
        [row] = db.session.scalars(select(LoginThrottle)).all()
        assert row.locked_until > utcnow() + timedelta(minutes=29) and row.failures == 0
    # Its failures were from a trusted source: the account is not locked for others.
    assert fetch(app, User, User.email == "target@example.com").locked_until is None
    ok(login(client, "target@example.com", ip=2))
    # The same address without the device token is its own source, trusted: it signs in too.
    ok(login(client, "target@example.com", ip=1))


def test_a_device_token_is_no_key_to_another_account_nor_are_fresh_ones_a_way_round(
        client, app, make_user):
    victim_id = make_user(email="owner@example.com")
    make_user(email="mallory@example.com")
    own_device = ok(login(client, "mallory@example.com", ip=60))["device_token"]
    # Mallory's own device token, then a new made-up one each try, against another account.
    tokens = [own_device] + [f"made-up-{n}" for n in range(4)]
    statuses = [login(client, "owner@example.com", WRONG, ip=60, device_token=token).status_code
                for token in tokens]
    assert statuses == [401] * 4 + [423]
    # The right password from the same source is refused now, with either kind of token.
    error(login(client, "owner@example.com", ip=60, device_token=own_device), 423,
          "account_locked")
    error(login(client, "owner@example.com", ip=60, device_token="made-up-9"), 423,
          "account_locked")
    with app.app_context():
        # Nothing Mallory sent became a trusted source of the owner's account.
        assert db.session.scalars(select(TrustedSource.id).where(
            TrustedSource.user_id == victim_id)).all() == []
    assert fetch(app, User, User.id == victim_id).locked_until is not None


def test_a_completed_password_reset_lifts_every_lock(client, app, make_user, mailbox):
    user_id = make_user(email="reset-me@example.com")
    for n in range(5):
        login(client, "reset-me@example.com", WRONG, ip=40)
    error(login(client, "reset-me@example.com", ip=40), 423, "account_locked")
    assert count(app, LoginThrottle) == 1

    ok(client.post(f"{API}/auth/forgot-password", json={"email": "reset-me@example.com"},
                   environ_base=addr(40)))
    token = re.search(r"/reset-password/([A-Za-z0-9_\-]+)", mailbox[-1]).group(1)
    ok(client.post(f"{API}/auth/reset-password/{token}", json={"password": "Fr3sh-start!"},
                   environ_base=addr(40)))
    assert count(app, LoginThrottle) == 0
    user = fetch(app, User, User.id == user_id)
    assert user.locked_until is None and user.failed_login_attempts == 0
    ok(login(client, "reset-me@example.com", "Fr3sh-start!", ip=40))


def test_an_admin_unlocks_an_account_and_a_student_cannot(client, app, make_user, auth_headers):
    user_id = make_user(email="locked-out@example.com")
    admin_id = make_user("admin")
    for n in range(5):
        login(client, "locked-out@example.com", WRONG, ip=50 + n)
    error(login(client, "locked-out@example.com", ip=60), 423, "account_locked")

    other = make_user()
    error(client.post(f"{API}/admin/users/{user_id}/unlock", headers=auth_headers(other)), 403,
          "role_required")
    error(client.post(f"{API}/admin/users/{user_id}/unlock"), 401)
    assert fetch(app, User, User.id == user_id).locked_until is not None
    assert count(app, LoginThrottle) == 5

    body = ok(client.post(f"{API}/admin/users/{user_id}/unlock", headers=auth_headers(admin_id)))
    assert body["message"] == "Sign-in locks lifted" and body["user"]["id"] == user_id
    user = fetch(app, User, User.id == user_id)
    assert user.locked_until is None and user.failed_login_attempts == 0
    assert count(app, LoginThrottle) == 0
    entry = fetch(app, AuditLog, AuditLog.action == "user.unlock")
    assert (entry.actor_id, entry.target_type, entry.target_id) == (admin_id, "user", user_id)
    assert entry.details == {"locks_lifted": 1}
    ok(login(client, "locked-out@example.com", ip=60))
    error(client.post(f"{API}/admin/users/999999/unlock", headers=auth_headers(admin_id)), 404)


def _without_clock(response) -> tuple:
    body = dict(response.json)
    details = body.pop("details", None)
    return (response.status_code, body.get("code"), bool(details),
            response.headers.get("Retry-After") is not None)


def test_an_unknown_email_answers_exactly_as_a_known_one(client, app, make_user):
    make_user(email="exists@example.com")
    known, unknown = [], []
    with recorded_statements(app) as statements:
        login(client, "exists@example.com", WRONG, ip=70)
        known_statements = len(statements)
        login(client, "ghost@example.com", WRONG, ip=71)
        unknown_statements = len(statements) - known_statements
    # The same work in the database for both (the first failure of each).
    assert known_statements == unknown_statements, (known_statements, unknown_statements)
    for n in range(4):
        known.append(login(client, "exists@example.com", WRONG, ip=72))
        unknown.append(login(client, "ghost@example.com", WRONG, ip=73))
    # The right password of the locked known account, and any for the unknown one.
    known.append(login(client, "exists@example.com", ip=72))
    unknown.append(login(client, "ghost@example.com", PASSWORD, ip=73))
    assert [_without_clock(r) for r in known] == [_without_clock(r) for r in unknown]
    assert [r.status_code for r in known] == [401, 401, 401, 423, 423]
    for k, u in zip(known, unknown):
        assert k.json["error"] == u.json["error"]
    # An address the unknown e-mail never saw is locked for it too, as for a known account.
    assert login(client, "ghost@example.com", PASSWORD, ip=74).status_code == 423
    assert login(client, "exists@example.com", PASSWORD, ip=75).status_code == 423


def test_deactivated_account_answers_a_right_and_a_wrong_password_alike(client, make_user):
    make_user(email="off@example.com", is_active=False)
    right, wrong = login(client, "off@example.com", ip=80), login(client, "off@example.com",
                                                                  WRONG, ip=80)
    assert (right.status_code, right.json) == (wrong.status_code, wrong.json) == (
        401, {"error": "Invalid e-mail or password", "code": "invalid_credentials"})


# --- refresh rotation, reuse, logout --------------------------------------------------------------

def signed_in(client, app, make_user):
    user_id = make_user()
    body = ok(login(client, email_of(app, user_id), ip=90))
    return user_id, body["access_token"], body["refresh_token"]


def jti(app, token):
    with app.app_context():
        return decode_token(token, allow_expired=True)["jti"]


def test_refresh_rotates_and_the_old_refresh_token_is_refused(client, app, make_user):
    user_id, access, refresh = signed_in(client, app, make_user)
    body = ok(client.post(f"{API}/auth/refresh", headers=bearer(refresh)))
    assert body["refresh_token"] != refresh and body["token_type"] == "Bearer"
    assert body["expires_in"] == app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    with app.app_context():
        session = db.session.scalar(select(LoginSession))
        assert session.refresh_jti == decode_token(body["refresh_token"])["jti"]
        assert session.refreshed_at is not None and session.ended_at is None
        assert decode_token(body["access_token"])["sid"] == session.id
    ok(client.get(f"{API}/auth/profile", headers=bearer(body["access_token"])))
    # The spent token again: reuse. The login ends, the newest tokens with it.
    error(client.post(f"{API}/auth/refresh", headers=bearer(refresh)), 401,
          "refresh_token_reused")
    error(client.post(f"{API}/auth/refresh", headers=bearer(body["refresh_token"])), 401,
          "token_revoked")
    for token in (body["access_token"], access):
        error(client.get(f"{API}/auth/profile", headers=bearer(token)), 401, "token_revoked")
    with app.app_context():
        session = db.session.scalar(select(LoginSession))
        assert session.end_reason == "reuse" and session.ended_at is not None
        revoked = set(db.session.scalars(select(RevokedToken.jti)))
    assert {jti(app, body["access_token"]), jti(app, body["refresh_token"]),
            jti(app, access)} <= revoked


def test_refresh_token_in_the_body_or_the_header(client, app, make_user):
    _, _, refresh = signed_in(client, app, make_user)
    by_body = ok(client.post(f"{API}/auth/refresh", json={"refresh_token": refresh}))
    by_header = ok(client.post(f"{API}/auth/refresh", headers=bearer(by_body["refresh_token"])))
    # The body wins over an access token a client's interceptor puts in the header.
    by_both = ok(client.post(f"{API}/auth/refresh", headers=bearer(by_header["access_token"]),
                             json={"refresh_token": by_header["refresh_token"]}))
    assert len({refresh, by_body["refresh_token"], by_header["refresh_token"],
                by_both["refresh_token"]}) == 4
    assert count(app, LoginSession) == 1 and count(app, LoginToken) == 4
    # An access token is no refresh token, in either place; nor is junk.
    error(client.post(f"{API}/auth/refresh", json={"refresh_token": by_both["access_token"]}),
          401)
    error(client.post(f"{API}/auth/refresh", json={"refresh_token": "x.y.z"}), 401)
    error(client.post(f"{API}/auth/refresh", json={"refresh_token": 5}), 422)
    error(client.post(f"{API}/auth/refresh"), 401, "token_missing")


def test_logout_with_the_access_token_ends_the_refresh_token_too(client, app, make_user):
    _, access, refresh = signed_in(client, app, make_user)
    ok(client.post(f"{API}/auth/logout", headers=bearer(access)))
    error(client.post(f"{API}/auth/refresh", headers=bearer(refresh)), 401, "token_revoked")
    error(client.post(f"{API}/auth/refresh", json={"refresh_token": refresh}), 401,
          "token_revoked")
    with app.app_context():
        session = db.session.scalar(select(LoginSession))
        assert session.end_reason == "logout"
        assert set(db.session.scalars(select(RevokedToken.jti))) == {jti(app, access),
                                                                      jti(app, refresh)}


def test_logout_with_the_refresh_token_ends_the_access_token_too(client, app, make_user):
    user_id, access, refresh = signed_in(client, app, make_user)
    other_access = ok(login(client, email_of(app, user_id), ip=91))["access_token"]
    rotated = ok(client.post(f"{API}/auth/refresh", headers=bearer(refresh)))
    ok(client.post(f"{API}/auth/logout", headers=bearer(rotated["refresh_token"])))
    for token in (access, rotated["access_token"]):
        error(client.get(f"{API}/auth/profile", headers=bearer(token)), 401, "token_revoked")
    error(client.post(f"{API}/auth/refresh", headers=bearer(rotated["refresh_token"])), 401)
    # Another login of the same user lives on.
    ok(client.get(f"{API}/auth/profile", headers=bearer(other_access)))
    with app.app_context():
        ends = sorted((s.end_reason or "") for s in db.session.scalars(select(LoginSession)))
    assert ends == ["", "logout"]


def test_a_refresh_token_from_before_logins_were_recorded_rotates_once(
        client, app, make_user, auth_headers):
    user_id = make_user()
    legacy = auth_headers(user_id, refresh=True)
    body = ok(client.post(f"{API}/auth/refresh", headers=legacy))
    error(client.post(f"{API}/auth/refresh", headers=legacy), 401, "token_revoked")
    ok(client.post(f"{API}/auth/refresh", headers=bearer(body["refresh_token"])))
    assert count(app, LoginSession) == 1


def test_sign_ins_at_once_from_a_new_source_record_it_once_and_each_start_a_login(postgres_app):
    app = postgres_app
    user_id = user_in(app)
    results = fire_together(app, 4, "POST", f"{API}/auth/login", headers={},
                            json={"email": email_of(app, user_id), "password": PASSWORD})
    # Each is a sign-in or, past the host's bound on hashes at once, `503 busy`; none a 500.
    assert all(status in (200, 503) for status, _ in results), results
    signed_in = [body for status, body in results if status == 200]
    assert signed_in, results
    with app.app_context():
        kinds = sorted(db.session.scalars(select(TrustedSource.kind).where(
            TrustedSource.user_id == user_id)))
    # The address once (the unique pair absorbed the race), and each sign-in's own device.
    assert kinds == sorted(["address"] + ["device"] * len(signed_in))
    assert len({body["device_token"] for body in signed_in}) == len(signed_in)
    assert count(app, LoginSession) == len(signed_in)


def test_wrong_passwords_at_once_all_count(postgres_app):
    app = postgres_app
    user_id = user_in(app)
    results = fire_together(app, 5, "POST", f"{API}/auth/login", headers={},
                            json={"email": email_of(app, user_id), "password": WRONG})
    assert all(status in (401, 423, 503) for status, _ in results), results
    wrong = sum(status in (401, 423) for status, _ in results)
    with app.app_context():
        [throttle] = db.session.scalars(select(LoginThrottle)).all()
        user = db.session.get(User, user_id)
        # Every checked failure was counted (one upsert each, no lost update); five lock.
        counted = throttle.failures if throttle.locked_until is None else 5
        assert counted == wrong
        assert (user.locked_until is not None) == (wrong == 5)


def test_two_refreshes_at_once_give_at_most_one_pair(postgres_app):
    app = postgres_app
    client = app.test_client()
    user_id = user_in(app)
    refresh = ok(login(client, email_of(app, user_id), ip=92))["refresh_token"]
    results = fire_together(app, 4, "POST", f"{API}/auth/refresh", headers=bearer(refresh))
    winners = [body for status, body in results if status == 200]
    assert len(winners) <= 1, results
    assert all(status in (200, 401) for status, _ in results), results
    # One access token from the sign-in, at most one from the refreshes; one login.
    assert count(app, LoginSession) == 1 and count(app, LoginToken) <= 2
    if winners:
        # The losers presented a spent token: reuse, so the winner's pair is revoked too.
        error(client.post(f"{API}/auth/refresh", headers=bearer(winners[0]["refresh_token"])),
              401)
        error(client.get(f"{API}/auth/profile", headers=bearer(winners[0]["access_token"])),
              401, "token_revoked")


# --- password reset: the same request for every e-mail ---------------------------------------------

def test_a_reset_request_queues_a_job_for_known_and_unknown_emails_alike(
        client, app, make_user, mailbox, monkeypatch):
    if not app.config.get("REDIS_URL"):
        from tests.conftest import require_service

        require_service("TEST_REDIS_URL (Redis)", None)
    monkeypatch.setitem(app.config, "JOBS_BACKEND", "rq")
    monkeypatch.setitem(app.config, "JOBS_QUEUE", "lms-test-reset")
    make_user(email="real@example.com")
    with recorded_statements(app) as statements:
        known = client.post(f"{API}/auth/forgot-password", json={"email": "real@example.com"},
                            environ_base=addr(100))
        known_statements = len(statements)
        unknown = client.post(f"{API}/auth/forgot-password", json={"email": "nope@example.com"},
                              environ_base=addr(101))
        unknown_statements = len(statements) - known_statements
    assert (known.status_code, known.json) == (unknown.status_code, unknown.json) == (200, {
        "message": "If an account exists for this e-mail, a reset link has been sent"})
    assert known_statements == unknown_statements
    # Nothing was looked up or sent in the request: two queued jobs, no link, no mail.
    assert mailbox == [] and count(app, PasswordResetToken) == 0
    with app.app_context():
        rows = db.session.scalars(select(BackgroundJob).order_by(BackgroundJob.created_at)).all()
        assert [(r.kind, r.status) for r in rows] == [("auth.password_reset", "queued")] * 2
        ids = [r.id for r in rows]
        # The worker's part: a link and a mail for the account, nothing for the stranger.
        results = [jobs.perform(job_id) for job_id in ids]
    assert sorted(r["sent"] for r in results) == [0, 1]
    assert count(app, PasswordResetToken) == 1
    with app.app_context():  # a finished job keeps no trace of the e-mail a stranger typed
        kept = db.session.scalars(select(BackgroundJob.args)).all()
    assert kept == [{}, {}]
    assert len([m for m in mailbox if "real@example.com" in m and "/reset-password/" in m]) == 1


# --- housekeeping -----------------------------------------------------------------------------------

def test_a_source_unseen_for_the_trust_window_is_a_stranger_again(client, app, make_user):
    user_id = make_user(email="away@example.com")
    ok(login(client, "away@example.com", ip=110))
    with app.app_context():
        for row in db.session.scalars(select(TrustedSource)):
            row.last_seen_at = utcnow() - timedelta(days=app.config["LOGIN_TRUSTED_SOURCE_DAYS"],
                                                    seconds=1)
        db.session.commit()
    for n in range(5):
        login(client, "away@example.com", WRONG, ip=120 + n)
    error(login(client, "away@example.com", ip=110), 423, "account_locked")
    assert fetch(app, User, User.id == user_id).locked_until is not None


def test_the_worker_tick_prunes_what_no_longer_decides_anything(client, app, make_user):
    from services import auth_service

    user_id = make_user(email="old@example.com")
    ok(login(client, "old@example.com", ip=130))
    login(client, "ghost-old@example.com", WRONG, ip=131)
    ok(login(client, "old@example.com", ip=132))
    long_ago = utcnow() - timedelta(days=400)
    with app.app_context():
        first = db.session.scalar(select(LoginSession).order_by(LoginSession.created_at))
        first.expires_at = long_ago
        for row in db.session.scalars(select(LoginThrottle)):
            row.updated_at = long_ago
        source = db.session.scalars(select(TrustedSource)).first()
        source.last_seen_at = long_ago
        db.session.commit()
        before = (count(app, LoginSession), count(app, LoginToken), count(app, TrustedSource))
        pruned = auth_service.prune_sign_in_records()
        db.session.commit()
    assert before == (2, 2, 4)  # two addresses, two devices
    # The unknown e-mail's two stale counters (its address's and "*"), one unseen source, one
    # expired login (with its token row).
    assert pruned == 4
    assert (count(app, LoginSession), count(app, LoginToken), count(app, TrustedSource),
            count(app, LoginThrottle)) == (1, 1, 3, 0)
    assert fetch(app, User, User.id == user_id).last_login_at is not None
