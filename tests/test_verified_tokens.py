"""A token sent again is not verified again (auth._VerifiedTokens), and nothing that refused it
before is weakened: expiry, a changed signature or secret, logout, deactivation."""
from __future__ import annotations

import time
from datetime import timedelta

import jwt as pyjwt
import pytest

from auth import jwt as manager
from models import User, db
from tests.support.assertions import error, ok

API = "/api/v1"
UNREAD = f"{API}/notifications/unread-count"


@pytest.fixture
def verifications(monkeypatch):
    """How many times PyJWT decoded a token's claims."""
    calls = []
    original = pyjwt.PyJWT.decode_complete

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("options"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pyjwt.PyJWT, "decode_complete", counted)
    return calls


def test_a_token_sent_again_is_not_decoded_again(client, make_user, auth_headers,
                                                 verifications):
    headers = auth_headers(make_user())
    assert ok(client.get(UNREAD, headers=headers))["unread_count"] == 0
    assert len(verifications) == 2  # the unverified claims, then the signed ones
    for _ in range(3):
        assert ok(client.get(UNREAD, headers=headers))["unread_count"] == 0
    assert len(verifications) == 2
    # Another token of the same user is verified once too.
    other = auth_headers(make_user())
    ok(client.get(UNREAD, headers=other))
    assert len(verifications) == 4


def test_a_remembered_token_still_expires(client, make_user, auth_headers):
    # Long enough for the first read on a loaded machine (a 1-second token had expired before
    # it in one CI run), then waited out from the token's own `exp`, not a fixed sleep.
    headers = auth_headers(make_user(), expires=timedelta(seconds=4))
    ok(client.get(UNREAD, headers=headers))
    token = headers["Authorization"].removeprefix("Bearer ")
    expires = pyjwt.decode(token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires - time.time()) + 0.2)
    error(client.get(UNREAD, headers=headers), 401, "token_expired")


def test_a_changed_signature_or_secret_is_refused_after_the_token_was_remembered(
        app, client, make_user, auth_headers, monkeypatch):
    headers = auth_headers(make_user())
    ok(client.get(UNREAD, headers=headers))
    token = headers["Authorization"].removeprefix("Bearer ")
    head, body, signature = token.split(".")
    forged = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    error(client.get(UNREAD, headers={"Authorization": f"Bearer {head}.{body}.{forged}"}),
          401, "token_invalid")
    # The same bytes under another key are not the token that was verified.
    monkeypatch.setitem(app.config, "JWT_SECRET_KEY", "another-secret-of-enough-length-0123456789")
    error(client.get(UNREAD, headers=headers), 401, "token_invalid")


def test_logout_and_deactivation_refuse_a_remembered_token(app, client, make_user,
                                                           auth_headers):
    leaving, staying = make_user(), make_user()
    headers, other = auth_headers(leaving), auth_headers(staying)
    ok(client.get(UNREAD, headers=headers))
    ok(client.get(UNREAD, headers=other))
    ok(client.post(f"{API}/auth/logout", headers=headers))
    error(client.get(UNREAD, headers=headers), 401, "token_revoked")
    admin = auth_headers(make_user("admin"))
    ok(client.put(f"{API}/admin/users/{staying}/deactivate", headers=admin))
    with app.app_context():
        assert db.session.get(User, staying).is_active is False
    # Deactivation moves the user's tokens_valid_after: every earlier token is refused.
    error(client.get(UNREAD, headers=other), 401, "token_revoked")


def test_the_tokens_remembered_are_bounded(client, make_user, auth_headers, monkeypatch):
    monkeypatch.setattr(type(manager), "KEPT", 3)
    manager._verified.clear()
    tokens = [auth_headers(make_user()) for _ in range(5)]
    for headers in tokens:
        ok(client.get(UNREAD, headers=headers))
        assert len(manager._verified) <= 3
    # The oldest went first; the newest is still remembered.
    remembered = {key[0] for key in manager._verified}
    assert tokens[-1]["Authorization"].removeprefix("Bearer ") in remembered
    assert tokens[0]["Authorization"].removeprefix("Bearer ") not in remembered
