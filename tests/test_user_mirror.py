"""The request's caller from its token and the Redis mirror of the user's access fields
(utils/pipeline/user_mirror.py): no user row is loaded on an authenticated read, and every
change of role, activity or tokens_valid_after made on one app instance holds at once on
another instance sharing the database and Redis (two hosts behind a balancer), whether it
is made by a route or by an admin in `flask shell`.

Needs Redis (skips without it, except under CI=true).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_jwt_extended import create_access_token
from sqlalchemy import text, update

from app import create_app
from models import User, db
from tests.conftest import redis_url, require_service
from tests.support.queries import recorded_statements
from utils.pipeline import redis_client, shared_state, user_mirror

API = "/api/v1"
UNREAD = f"{API}/notifications/unread-count"
TEACHING = f"{API}/courses/get-courses"


@pytest.fixture(autouse=True)
def needs_redis():
    require_service("Redis (TEST_REDIS_URL)", redis_url())


@dataclass
class Hosts:
    """Two app instances on one PostgreSQL database and one Redis: two hosts' workers."""
    app: Flask
    client: FlaskClient
    other: FlaskClient
    made: int = 0

    def user(self, role: str = "student") -> int:
        self.made += 1
        with self.app.app_context():
            user = User(email=f"{role}{self.made}@example.com", first_name=role.capitalize(),
                        last_name=f"Number{self.made}", role=role, is_active=True,
                        is_email_verified=True)
            user.set_password("Passw0rd!")
            db.session.add(user)
            db.session.commit()
            return user.id

    def headers(self, user_id: int) -> dict:
        with self.app.app_context():
            token = create_access_token(db.session.get(User, user_id))
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def hosts(postgres_app):
    other = create_app("testing", overrides={
        "UPLOAD_FOLDER": postgres_app.config["UPLOAD_FOLDER"],
        "SQLALCHEMY_DATABASE_URI": postgres_app.config["SQLALCHEMY_DATABASE_URI"]})
    yield Hosts(postgres_app, postgres_app.test_client(), other.test_client())
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


def redis_of(app):
    with app.app_context():
        return redis_client.get()


def refused(response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.get_json())
    assert response.get_json()["code"] == code


def change_in_shell(app, user_id: int, **values) -> None:
    """What an admin does in `flask shell`: the ORM object, changed and committed."""
    with app.app_context():
        user = db.session.get(User, user_id)
        for name, value in values.items():
            setattr(user, name, value)
        db.session.commit()


def test_an_authenticated_read_loads_no_user_row(app, client, make_user, auth_headers):
    student = auth_headers(make_user())
    assert client.get(UNREAD, headers=student).status_code == 200  # fills the mirror
    with recorded_statements(app) as statements:
        response = client.get(UNREAD, headers=student)
    assert response.status_code == 200 and response.get_json() == {"unread_count": 0}
    assert len(statements) == 1, statements  # the count; the caller came from Redis
    assert not any("FROM users" in s for s in statements), statements


def test_the_mirror_holds_the_access_fields_in_the_current_generation(app, client, make_user,
                                                                      auth_headers):
    user_id = make_user()
    assert client.get(UNREAD, headers=auth_headers(user_id)).status_code == 200
    redis = redis_of(app)
    generation = redis.get(shared_state.SYNCED)
    assert generation and redis.get(user_mirror.user_key(user_id)) == generation + b"|student|1|"
    assert 0 < redis.ttl(user_mirror.user_key(user_id)) <= app.config["SHARED_SYNC_SECONDS"] + 5


def test_a_deactivation_in_a_shell_on_one_host_is_refused_on_the_other(hosts):
    app, client, other_host = hosts.app, hosts.client, hosts.other
    user_id = hosts.user()
    student = hosts.headers(user_id)
    assert other_host.get(UNREAD, headers=student).status_code == 200  # mirrored there
    change_in_shell(app, user_id, is_active=False)
    refused(other_host.get(UNREAD, headers=student), 401, "account_inactive")
    refused(client.get(UNREAD, headers=student), 401, "account_inactive")
    change_in_shell(app, user_id, is_active=True)
    assert other_host.get(UNREAD, headers=student).status_code == 200


def test_a_role_change_on_one_host_holds_on_the_other(hosts):
    app, client, other_host = hosts.app, hosts.client, hosts.other
    user_id = hosts.user("instructor")
    instructor = hosts.headers(user_id)
    assert other_host.get(TEACHING, headers=instructor).status_code == 200
    change_in_shell(app, user_id, role="student")
    refused(other_host.get(TEACHING, headers=instructor), 403, "role_required")
    # An admin's demotion through the API also ends the user's tokens, on every host.
    change_in_shell(app, user_id, role="instructor")
    assert other_host.get(TEACHING, headers=instructor).status_code == 200
    admin = hosts.headers(hosts.user("admin"))
    demoted = client.put(f"{API}/admin/users/{user_id}", headers=admin, json={"role": "student"})
    assert demoted.status_code == 200, demoted.get_json()
    refused(other_host.get(TEACHING, headers=instructor), 401, "token_revoked")
    with app.app_context():
        row = db.session.get(User, user_id)
        assert row.role == "student" and row.tokens_valid_after is not None


def test_an_api_deactivation_and_a_password_change_hold_on_the_other_host(hosts):
    app, client, other_host = hosts.app, hosts.client, hosts.other
    user_id = hosts.user()
    login = client.post(f"{API}/auth/login", json={
        "email": "student1@example.com", "password": "Passw0rd!"}).get_json()
    first = {"Authorization": f"Bearer {login['access_token']}"}
    assert other_host.get(UNREAD, headers=first).status_code == 200
    changed = client.post(f"{API}/auth/change-password", headers=first, json={
        "current_password": "Passw0rd!", "new_password": "Changed-pass-9"})
    assert changed.status_code == 200, changed.get_json()
    refused(other_host.get(UNREAD, headers=first), 401, "token_revoked")
    fresh = {"Authorization": f"Bearer {changed.get_json()['access_token']}"}
    assert other_host.get(UNREAD, headers=fresh).status_code == 200

    admin = hosts.headers(hosts.user("admin"))
    assert client.put(f"{API}/admin/users/{user_id}/deactivate",
                      headers=admin).status_code == 200
    refused(other_host.get(UNREAD, headers=fresh), 401, "token_revoked")
    with app.app_context():
        assert db.session.get(User, user_id).is_active is False


def test_a_deleted_user_is_a_tombstone_on_every_host(hosts):
    app, other_host = hosts.app, hosts.other
    user_id = hosts.user()
    student = hosts.headers(user_id)
    assert other_host.get(UNREAD, headers=student).status_code == 200
    with app.app_context():
        db.session.delete(db.session.get(User, user_id))
        db.session.commit()
    redis = redis_of(app)
    assert redis.get(user_mirror.user_key(user_id)).endswith(b"|-")
    refused(other_host.get(UNREAD, headers=student), 401, "token_invalid")


def test_a_write_outside_the_orm_holds_from_the_next_generation(app, client, make_user,
                                                                auth_headers):
    """SQL that bypasses the session (psql, a migration) is not published; the mirror's next
    generation (a sync every SHARED_SYNC_SECONDS, or at once after a failed mirror write
    deleted the marker) stops trusting what was mirrored before it."""
    user_id = make_user()
    student = auth_headers(user_id)
    assert client.get(UNREAD, headers=student).status_code == 200
    with app.app_context():
        db.session.execute(update(User).where(User.id == user_id).values(is_active=False))
        db.session.commit()
    assert client.get(UNREAD, headers=student).status_code == 200  # the old generation's copy
    redis_of(app).delete(shared_state.SYNCED)  # it expires, or a failed write deleted it
    refused(client.get(UNREAD, headers=student), 401, "account_inactive")
    refused(client.get(UNREAD, headers=student), 401, "account_inactive")  # the new copy


def test_a_stale_or_forged_generation_is_not_trusted(app, client, make_user, auth_headers):
    user_id = make_user()
    student = auth_headers(user_id)
    assert client.get(UNREAD, headers=student).status_code == 200
    redis = redis_of(app)
    redis.set(user_mirror.user_key(user_id), b"0ld-generation|admin|1|")
    assert client.get(f"{API}/admin/dashboard", headers=student).status_code == 403
    assert redis.get(user_mirror.user_key(user_id)).endswith(b"|student|1|")


def test_a_rolled_back_savepoint_does_not_publish_its_change(app, client, make_user,
                                                            auth_headers):
    user_id = make_user()
    student = auth_headers(user_id)
    assert client.get(UNREAD, headers=student).status_code == 200
    with app.app_context():
        user = db.session.get(User, user_id)
        savepoint = db.session.begin_nested()
        user.is_active = False
        db.session.flush()
        savepoint.rollback()
        db.session.execute(text("SELECT 1"))
        db.session.commit()
    assert redis_of(app).get(shared_state.SYNCED) is None  # distrusted rather than guessed
    assert client.get(UNREAD, headers=student).status_code == 200
