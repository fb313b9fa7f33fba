"""The state every host shares, read in one Redis round trip a request (utils/pipeline/shared_state.py):
revocations and blocks hold when Redis loses its data or a mirror write fails, and the hot
paths send Redis at most two commands.

Needs Redis (skips without it, except under CI=true).
"""
from __future__ import annotations

import pytest
from sqlalchemy import select

from models import BlockedIP, RevokedToken, db
from tests.conftest import redis_url, require_service
from tests.support.standins import free_port
from utils.pipeline import blocked_ips, redis_client, shared_state

API = "/api/v1"
PASSWORD = "Passw0rd!"


@pytest.fixture(autouse=True)
def needs_redis():
    require_service("Redis (TEST_REDIS_URL)", redis_url())


def redis_of(app):
    with app.app_context():
        return redis_client.get()


def login(client, email: str) -> dict:
    response = client.post(f"{API}/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def email_of(app, user_id: int) -> str:
    with app.app_context():
        from models import User

        return db.session.get(User, user_id).email


def logout(client, tokens: dict):
    return client.post(f"{API}/auth/logout",
                       headers={"Authorization": f"Bearer {tokens['access_token']}"},
                       json={"refresh_token": tokens["refresh_token"]})


def profile(client, tokens: dict):
    return client.get(f"{API}/auth/profile",
                      headers={"Authorization": f"Bearer {tokens['access_token']}"})


def refresh(client, tokens: dict):
    return client.post(f"{API}/auth/refresh",
                       headers={"Authorization": f"Bearer {tokens['refresh_token']}"})


def refused(response, code: str = "token_revoked") -> None:
    assert response.status_code == 401, (response.status_code, response.get_json())
    assert response.get_json()["code"] == code


def test_a_logout_holds_when_redis_loses_its_data(app, client, make_user):
    tokens = login(client, email_of(app, make_user()))
    assert profile(client, tokens).status_code == 200
    assert logout(client, tokens).status_code == 200
    refused(profile(client, tokens))

    redis = redis_of(app)
    redis.flushdb()  # a restart without persistence, a flush, or a failover to an empty copy

    refused(profile(client, tokens))
    refused(refresh(client, tokens))
    # The first request after the loss rebuilt the mirror from the database.
    with app.app_context():
        jtis = set(db.session.scalars(select(RevokedToken.jti)))
    assert len(jtis) == 2
    assert all(redis.exists(shared_state.jti_key(jti)) for jti in jtis)
    assert redis.exists(shared_state.SYNCED) and redis.get(shared_state.EPOCH) is not None


def test_a_block_holds_when_redis_loses_its_data(app, client):
    ip = "203.0.113.61"
    with app.app_context():
        blocked_ips.block_ip(ip, seconds=None, reason="test")
    redis = redis_of(app)
    redis.flushdb()
    response = client.get(f"{API}/public/categories", environ_base={"REMOTE_ADDR": ip})
    assert response.status_code == 403 and response.get_json()["code"] == "ip_blocked"
    assert redis.get(shared_state.ip_key(ip)) == b"test"
    assert redis.ttl(shared_state.ip_key(ip)) == -1  # a block without end has no TTL
    assert client.get(f"{API}/public/categories", environ_base={"REMOTE_ADDR": "203.0.113.62"}
                      ).status_code == 200


def test_a_logout_while_redis_is_down_is_enforced_from_the_database_then_mirrored(
        app, client, make_user):
    tokens = login(client, email_of(app, make_user()))
    real = app.config["REDIS_URL"]
    app.config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    try:
        assert logout(client, tokens).status_code == 200
        refused(profile(client, tokens))  # Redis down: the database answers
    finally:
        app.config["REDIS_URL"] = real
    with app.app_context():
        jti = db.session.scalar(select(RevokedToken.jti).where(
            RevokedToken.token_type == "access"))
    redis = redis_of(app)
    assert not redis.exists(shared_state.jti_key(jti))  # the mirror write failed
    # Within SHARED_SYNC_SECONDS the marker expires; the next request brings the mirror up to
    # date before anyone trusts it again.
    redis.delete(shared_state.SYNCED)
    refused(profile(client, tokens))
    assert redis.exists(shared_state.jti_key(jti)) and redis.exists(shared_state.SYNCED)
    refused(profile(client, tokens))  # now from the mirror


def test_a_lifted_block_whose_mirror_delete_failed_is_lifted_at_the_next_sync(app, client):
    ip = "203.0.113.63"
    with app.app_context():
        blocked_ips.block_ip(ip, seconds=600, reason="test")
    real = app.config["REDIS_URL"]
    app.config["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    try:
        with app.app_context():
            assert blocked_ips.unblock_ip(ip) is True
            db.session.commit()
    finally:
        app.config["REDIS_URL"] = real
    redis = redis_of(app)
    assert redis.exists(shared_state.ip_key(ip))  # stale
    redis.delete(shared_state.SYNCED)
    assert client.get(f"{API}/public/categories", environ_base={"REMOTE_ADDR": ip}).status_code == 200
    assert not redis.exists(shared_state.ip_key(ip))
    with app.app_context():
        assert db.session.scalar(select(BlockedIP.id)) is None


def commands_of(app, client, path: str, headers: dict | None = None) -> list[str]:
    """The Redis commands one request sends (after a warm-up request), in order, as Redis's
    MONITOR sees them on the suite's database: other processes' traffic on the same server
    (other databases) is not counted, nor the commands a Lua script runs inside Redis."""
    import uuid

    import redis as redis_lib

    suite = redis_of(app)
    db = suite.connection_pool.connection_kwargs.get("db", 0)
    assert client.get(path, headers=headers or {}).status_code == 200
    marker = uuid.uuid4().hex
    watcher = redis_lib.Redis.from_url(app.config["REDIS_URL"], socket_timeout=10)
    sent: list[str] = []
    with watcher.monitor() as monitor:
        suite.echo(f"start-{marker}")
        assert client.get(path, headers=headers or {}).status_code == 200
        suite.echo(f"end-{marker}")
        counting = False
        for item in monitor.listen():
            if int(item["db"]) != db or item.get("client_type") == "lua":
                continue
            command = item["command"]
            if command == f"ECHO start-{marker}":
                counting = True
            elif command == f"ECHO end-{marker}":
                break
            elif counting:
                sent.append(command.split()[0].lower())
    watcher.close()
    return sent


def test_hot_reads_cost_at_most_two_redis_round_trips(app, client, make_user, auth_headers):
    student = auth_headers(make_user())
    # A guest's cached catalog page: the limit's script, the one MGET (state, version, copy) and
    # the copy's renewal claim (catalog_cache.REFRESH_AHEAD), sent together in one write by the
    # catalog fast path (tests/test_catalog_fast_path.py counts the trips).
    assert commands_of(app, client, f"{API}/public/get-courses?per_page=20") == [
        "evalsha", "mget", "eval"]
    # A signed-in read: the MGET alone (address, revocation), no limiter headers.
    assert commands_of(app, client, f"{API}/notifications/unread-count", student) == ["mget"]
    assert commands_of(app, client, f"{API}/health") == ["mget"]


def test_limited_writes_still_say_what_is_left(app, client):
    response = client.post(f"{API}/auth/forgot-password", json={"email": "a@example.com"})
    assert response.status_code == 200
    limit = app.config["RATE_LIMIT_PASSWORD_RESET_REQUEST"].split()[0]
    assert response.headers["X-RateLimit-Limit"] == limit
    assert response.headers["X-RateLimit-Remaining"] == str(int(limit) - 1)
    assert "X-RateLimit-Limit" not in client.get(f"{API}/public/get-courses").headers
