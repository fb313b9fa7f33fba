"""Password hashes: Argon2id for new ones; Werkzeug PBKDF2-SHA256 hashes (this system's former
scheme, the original system's) verify and are rewritten as Argon2id at the next successful
sign-in; PASSWORD_HASH_SCHEME=pbkdf2 keeps the spec's scheme."""
from __future__ import annotations

import pytest
from sqlalchemy import select, update
from werkzeug.security import generate_password_hash

from models import User, db
from utils import passwords

PASSWORD = "Passw0rd!"


def login(client, email, password=PASSWORD):
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def stored_hash(app, user_id):
    with app.app_context():
        return db.session.scalar(select(User.password_hash).where(User.id == user_id))


def store_hash(app, user_id, value):
    with app.app_context():
        db.session.execute(update(User).where(User.id == user_id).values(password_hash=value))
        db.session.commit()


@pytest.fixture(scope="module")
def werkzeug_hashes():
    """Hashes as Werkzeug makes them at the spec's and a stronger cost (slow: made once)."""
    return {n: generate_password_hash(PASSWORD, method=f"pbkdf2:sha256:{n}")
            for n in (600000, 1000000)}


@pytest.mark.parametrize("iterations", [600000, 1000000])
def test_a_werkzeug_pbkdf2_hash_verifies_and_becomes_argon2id_at_sign_in(
        app, client, make_user, werkzeug_hashes, iterations):
    user_id = make_user(email="old@example.com")
    store_hash(app, user_id, werkzeug_hashes[iterations])

    response = login(client, "old@example.com")

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["access_token"]
    new = stored_hash(app, user_id)
    assert new.startswith("$argon2id$v=19$m=64,t=1,p=1$")
    with app.app_context():
        assert passwords.verify(new, PASSWORD)
    # And the rewritten hash signs in as well, without being rewritten again.
    assert login(client, "old@example.com").status_code == 200
    assert stored_hash(app, user_id) == new


def test_a_wrong_password_leaves_the_old_hash_alone(app, client, make_user, werkzeug_hashes):
    user_id = make_user(email="old@example.com")
    store_hash(app, user_id, werkzeug_hashes[600000])

    response = login(client, "old@example.com", "Wrong-passw0rd")

    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_credentials"
    assert stored_hash(app, user_id) == werkzeug_hashes[600000]


def test_a_deactivated_account_is_refused_and_its_hash_not_rewritten(
        app, client, make_user, werkzeug_hashes):
    user_id = make_user(email="old@example.com", is_active=False)
    store_hash(app, user_id, werkzeug_hashes[600000])

    response = login(client, "old@example.com")
    # Answered like a wrong password (issue 23: a deactivated account tells nothing apart).
    assert (response.status_code, response.get_json()["code"]) == (401, "invalid_credentials")
    assert stored_hash(app, user_id) == werkzeug_hashes[600000]


def test_an_argon2id_hash_of_a_lower_cost_is_brought_up_to_the_configured_one(
        app, client, make_user, monkeypatch):
    user_id = make_user(email="cheap@example.com")
    assert stored_hash(app, user_id).startswith("$argon2id$v=19$m=64,t=1,p=1$")
    monkeypatch.setitem(app.config, "ARGON2_MEMORY_KIB", 128)

    assert login(client, "cheap@example.com").status_code == 200

    assert stored_hash(app, user_id).startswith("$argon2id$v=19$m=128,t=1,p=1$")


def test_the_pbkdf2_scheme_keeps_werkzeug_hashes_for_new_passwords(
        app, client, make_user, monkeypatch):
    monkeypatch.setitem(app.config, "PASSWORD_HASH_SCHEME", "pbkdf2")
    user_id = make_user(email="spec@example.com")
    assert stored_hash(app, user_id).startswith("pbkdf2:sha256:1000$")

    assert login(client, "spec@example.com").status_code == 200
    assert stored_hash(app, user_id).startswith("pbkdf2:sha256:1000$")
    # A PBKDF2 hash of another cost moves to the configured method.
    store_hash(app, user_id, generate_password_hash(PASSWORD, method="pbkdf2:sha256:2000"))
    assert login(client, "spec@example.com").status_code == 200
    assert stored_hash(app, user_id).startswith("pbkdf2:sha256:1000$")


def test_the_pbkdf2_scheme_keeps_an_existing_argon2id_hash(app, client, make_user, monkeypatch):
    user_id = make_user(email="strong@example.com")
    before = stored_hash(app, user_id)
    monkeypatch.setitem(app.config, "PASSWORD_HASH_SCHEME", "pbkdf2")

    assert login(client, "strong@example.com").status_code == 200
    assert stored_hash(app, user_id) == before


@pytest.mark.parametrize("stored", [
    "", "garbage", "$argon2id$v=19$m=64,t=1,p=1$broken", "pbkdf2:sha999:1$salt$hash",
    "pbkdf2:sha256:1000$only-salt", "plain$text$here",
])
def test_a_malformed_hash_never_verifies(app, stored):
    with app.app_context():
        assert passwords.verify(stored, PASSWORD) is False


def test_an_unknown_scheme_is_refused(app, monkeypatch):
    monkeypatch.setitem(app.config, "PASSWORD_HASH_SCHEME", "md5")
    with app.app_context(), pytest.raises(ValueError, match="PASSWORD_HASH_SCHEME"):
        passwords.hash_password(PASSWORD)


def test_an_unknown_email_costs_a_check_in_the_configured_scheme(app, monkeypatch):
    calls = []
    real = passwords.verify
    monkeypatch.setattr(passwords, "verify", lambda stored, pw: calls.append(stored) or real(
        stored, pw))
    client = app.test_client()

    assert login(client, "nobody@example.com").status_code == 401

    assert len(calls) == 1 and calls[0].startswith("$argon2id$v=19$m=64,t=1,p=1$")
