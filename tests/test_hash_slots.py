"""Slow password hashing is bounded per host (utils/pipeline/hash_slots.py): with every slot taken, a
sign-in answers 503 `busy` at once rather than holding a worker, and changes nothing."""
from __future__ import annotations

import fcntl
import os
import time

from sqlalchemy import select

from models import User, db

API = "/api/v1"


def test_a_sign_in_with_no_hashing_slot_free_is_503_busy_and_counts_nothing(
        app, client, make_user, tmp_path, monkeypatch):
    user_id = make_user()
    with app.app_context():
        email = db.session.get(User, user_id).email
    monkeypatch.setitem(app.config, "PASSWORD_HASH_SLOTS", 1)
    monkeypatch.setitem(app.config, "PASSWORD_HASH_WAIT_MS", 100)
    monkeypatch.setitem(app.config, "PASSWORD_HASH_SLOT_DIR", str(tmp_path))
    # Another worker of this host is hashing: it holds the one slot.
    holder = os.open(tmp_path / "slot-0", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        started = time.monotonic()
        response = client.post(f"{API}/auth/login",
                               json={"email": email, "password": "wrong-Passw0rd!"})
        assert time.monotonic() - started < 2
        assert response.status_code == 503, response.get_json()
        assert response.get_json() == {
            "error": "Too many sign-ins at once; try again in a moment", "code": "busy"}
        assert response.headers["Retry-After"] == "1"
        # Registration hashes too, and waits its turn the same way.
        response = client.post(f"{API}/auth/register", json={
            "email": "new-person@example.com", "password": "Str0ng-Passw0rd!",
            "first_name": "New", "last_name": "Person"})
        assert response.status_code == 503 and response.get_json()["code"] == "busy"
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    with app.app_context():
        user = db.session.get(User, user_id)
        assert user.failed_login_attempts == 0  # the refused attempt was not judged
        assert db.session.scalar(select(User.id).where(
            User.email == "new-person@example.com")) is None

    response = client.post(f"{API}/auth/login", json={"email": email, "password": "Passw0rd!"})
    assert response.status_code == 200 and response.get_json()["access_token"]
    # The slot is given back after each use: the next sign-in finds it free.
    response = client.post(f"{API}/auth/login", json={"email": email, "password": "Passw0rd!"})
    assert response.status_code == 200
