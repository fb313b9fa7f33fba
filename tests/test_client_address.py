"""Whose forwarded headers the app believes (utils/pipeline/client_address.py): X-Forwarded-For,
-Proto and -Host only from a peer in TRUSTED_PROXIES, walked from the right; from anyone else
they are removed before anything reads them. Attacked as a client that reaches the app server
directly would: rotating X-Forwarded-For against the login limit, an IP block and the audit log,
junk addresses, and X-Forwarded-Host against the HTTPS redirect. (A real gunicorn behind nginx:
tests/test_proxy.py; gunicorn alone: tests/test_multiworker.py.)"""
from __future__ import annotations

import pytest
from sqlalchemy import select

from app import create_app
from config import ConfigError
from models import AuditLog, SecurityEvent, db
from tests.support.assertions import error
from utils.pipeline.blocked_ips import block_ip
from utils.pipeline.client_address import TrustedProxies, parse_networks

PROXY_NET = "10.9.0.0/24"
PROXY = {"REMOTE_ADDR": "10.9.0.2"}
DIRECT = {"REMOTE_ADDR": "198.51.100.40"}
PROBE = "/api/v1/public/categories"  # health probes are never refused; this route is


@pytest.fixture
def behind_proxy(app):
    """The suite's app (its database, even an in-memory one, and Redis), trusting PROXY_NET as
    create_app would with TRUSTED_PROXIES set to it."""
    middleware = app.wsgi_app
    assert isinstance(middleware, TrustedProxies) and middleware.networks == ()
    middleware.networks = parse_networks([PROXY_NET])
    try:
        yield app
    finally:
        middleware.networks = ()


def wrong_login(client, n, **kwargs):
    """A wrong password for one account (failures for many accounts would block the address,
    which is another test's subject)."""
    return client.post("/api/v1/auth/login", json={"email": "nobody@example.com",
                                                   "password": f"Wrong-pass-{n}"}, **kwargs)


def refused_sign_in(response) -> bool:
    """A wrong password's answer (401, or 423 once the account is locked for this source)."""
    return response.status_code in (401, 423)


def test_rotating_x_forwarded_for_straight_at_the_app_does_not_escape_the_login_limit(
        behind_proxy):
    client = behind_proxy.test_client()
    allowed = int(behind_proxy.config["RATE_LIMIT_LOGIN"].split()[0])
    answers = [wrong_login(client, n, environ_base=DIRECT,
                           headers={"X-Forwarded-For": f"203.0.113.{n + 1}"})
               for n in range(allowed + 1)]

    assert all(refused_sign_in(a) for a in answers[:allowed]), [a.status_code for a in answers]
    error(answers[-1], 429, "rate_limited")
    with behind_proxy.app_context():
        addresses = set(db.session.scalars(select(SecurityEvent.ip_address)))
    assert addresses == {DIRECT["REMOTE_ADDR"]}


def test_the_proxys_x_forwarded_for_names_the_client(behind_proxy):
    client = behind_proxy.test_client()
    allowed = int(behind_proxy.config["RATE_LIMIT_LOGIN"].split()[0])
    # Each client behind the proxy has its own limit; the proxy's own entry (rightmost, in
    # the trusted network) is skipped, and what the client wrote left of it is not believed.
    for n in range(allowed):
        assert refused_sign_in(wrong_login(client, n, environ_base=PROXY, headers={
            "X-Forwarded-For": "192.0.2.1, 198.51.100.7, 10.9.0.3"}))
    error(wrong_login(client, 99, environ_base=PROXY,
                      headers={"X-Forwarded-For": "198.51.100.7"}), 429, "rate_limited")
    # (Another account: five failures from untrusted sources lock this one for every source
    # that never signed in to it, before any count, and the point here is whose address.)
    other = client.post("/api/v1/auth/login", environ_base=PROXY,
                        json={"email": "somebody@example.com", "password": "Wrong-pass-100"},
                        headers={"X-Forwarded-For": "198.51.100.8"})
    error(other, 401, "invalid_credentials")
    with behind_proxy.app_context():
        addresses = list(db.session.scalars(select(SecurityEvent.ip_address)))
    assert set(addresses) == {"198.51.100.7", "198.51.100.8"}


def test_an_ip_block_holds_whatever_x_forwarded_for_says(behind_proxy):
    client = behind_proxy.test_client()
    with behind_proxy.app_context():
        block_ip(DIRECT["REMOTE_ADDR"], seconds=600, reason="test")
        block_ip("198.51.100.41", seconds=600, reason="test")

    error(client.get(PROBE, environ_base=DIRECT, headers={"X-Forwarded-For": "203.0.113.5"}),
          403, "ip_blocked")
    # Claiming a blocked address from elsewhere neither blocks nor frees anyone.
    assert client.get(PROBE, environ_base={"REMOTE_ADDR": "198.51.100.42"},
                      headers={"X-Forwarded-For": "198.51.100.41"}).status_code == 200
    # Through the proxy, the blocked client is refused and another is not.
    error(client.get(PROBE, environ_base=PROXY, headers={"X-Forwarded-For": "198.51.100.41"}),
          403, "ip_blocked")
    assert client.get(PROBE, environ_base=PROXY,
                      headers={"X-Forwarded-For": "198.51.100.43"}).status_code == 200


def test_the_audit_log_records_the_address_the_app_believes(behind_proxy, make_user,
                                                             auth_headers):
    client = behind_proxy.test_client()
    admin = auth_headers(make_user("admin"))
    for n, (environ, forwarded) in enumerate([(DIRECT, "203.0.113.50"),
                                              (PROXY, "203.0.113.51")]):
        response = client.post("/api/v1/admin/blocked-ips", headers={
            **admin, "X-Forwarded-For": forwarded}, environ_base=environ,
            json={"ip_address": f"192.0.2.{n + 10}", "reason": "audit test"})
        assert response.status_code == 201, response.json
    with behind_proxy.app_context():
        logged = list(db.session.scalars(select(AuditLog.ip_address).order_by(AuditLog.id)))
    assert logged == [DIRECT["REMOTE_ADDR"], "203.0.113.51"]


@pytest.mark.parametrize("forwarded", ["A" * 60, "not-an-address", "1.2.3.4.5", "::g",
                                       "198.51.100.9, " + "B" * 60, "\u00e9\u00e9", ", ,"])
def test_an_x_forwarded_for_that_is_not_an_address_is_ignored(behind_proxy, app, forwarded):
    client = behind_proxy.test_client()
    for environ in (DIRECT, PROXY):
        response = wrong_login(client, 1, environ_base=environ,
                               headers={"X-Forwarded-For": forwarded})
        assert refused_sign_in(response), response.get_data(as_text=True)
    with behind_proxy.app_context():
        addresses = set(db.session.scalars(select(SecurityEvent.ip_address)))
    # Junk ends the walk: the last address believed (the proxy, here) stays the client.
    assert addresses == {DIRECT["REMOTE_ADDR"], PROXY["REMOTE_ADDR"]}


def test_x_forwarded_host_and_proto_do_not_steer_the_https_redirect(app):
    production_like = create_app("testing", overrides={
        "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"], "FORCE_HTTPS": True,
        "TRUSTED_PROXIES": [PROXY_NET]})
    client = production_like.test_client()
    page = "/api/v1/openapi.json"  # redirected like any API route, and needs no database
    forged = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
              "X-Forwarded-Port": "8443", "Forwarded": "host=evil.example;proto=https"}

    direct = client.get(f"{page}?v=2", base_url="http://api.example.com", headers=forged,
                        environ_base=DIRECT)
    assert direct.status_code == 302
    assert direct.headers["Location"] == f"https://api.example.com{page}?v=2"
    assert "Strict-Transport-Security" not in direct.headers

    # The trusted proxy's own headers are believed: it terminated TLS for this host.
    proxied = client.get(page, base_url="http://10.9.0.1:5000", environ_base=PROXY, headers={
        "X-Forwarded-Host": "api.example.com", "X-Forwarded-Proto": "https"})
    assert proxied.status_code == 200, proxied.headers
    assert "max-age=" in proxied.headers["Strict-Transport-Security"]
    plain = client.get(page, base_url="http://10.9.0.1:5000", environ_base=PROXY, headers={
        "X-Forwarded-Host": "api.example.com", "X-Forwarded-Proto": "http"})
    assert plain.status_code == 302
    assert plain.headers["Location"] == f"https://api.example.com{page}"


@pytest.mark.parametrize("setting", ["1", "10.0.0.0/33", "proxy.example"])
def test_trusted_proxies_must_be_addresses_or_networks(app, setting):
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        create_app("testing", overrides={"UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"],
                                         "TRUSTED_PROXIES": [setting]})
