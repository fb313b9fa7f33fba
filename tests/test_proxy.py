"""The compose deployment's reverse proxy in front of two app servers, as CI can run it: nginx
from Debian's packages with deploy/nginx/lms.conf.template rendered as the proxy container
renders it (tests/support/nginx_proxy.py), in front of two gunicorn masters (two sync workers
each) on one scratch PostgreSQL database and one Redis database of this module's own (4, or 3
if the suite uses 4).

Docker's DNS is played by a stand-in (tests/support/dns_standin.py) answering the service name
`web` with one address per "replica": the servers listen on 127.0.0.2 and 127.0.0.3 at the same
port, as replicas listen on one port at different addresses. Clients connect from addresses of
their own (127.0.0.5 and up), so the address the app believes is visibly the one the proxy saw,
not nginx's own (127.0.0.1) and not whatever X-Forwarded-For the client wrote.

What each answer reached is read from the servers' request logs (one JSON line per request,
with its X-Request-ID) and the proxy's access log.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from app import create_app
from config import normalise_database_url
from models import db
from tests.support.dns_standin import DnsStandin
from tests.support.gunicorn_server import GunicornServer, production_env, run_flask
from tests.support.nginx_proxy import NginxProxy, nginx_binary, require_tools
from tests.support.scratch_services import flushed_redis, own_redis_url, scratch_postgres
from tests.support.standins import free_port

API = "/api/v1"
HOSTS = {"A": "127.0.0.2", "B": "127.0.0.3"}
NOBODY = "127.0.0.4"  # a "replica" whose container is not listening (yet, or any more)
RESET_LIMIT = 3  # RATE_LIMIT_PASSWORD_RESET_REQUEST, per minute
UPLOAD_LIMIT = 52428800  # MAX_CONTENT_LENGTH's default and the template's client_max_body_size
# The app believes forwarded headers from the proxy's address as the servers see it.
APP_TRUSTS_THE_PROXY = {"TRUSTED_PROXIES": "127.0.0.1"}


@dataclass
class Reply:
    request_id: str
    status: int
    headers: http.client.HTTPMessage
    text: str

    @property
    def json(self):
        return json.loads(self.text)


@pytest.fixture(scope="module")
def scratch_database():
    nginx_binary()  # skip (or, under CI, fail) before building anything without nginx
    require_tools()
    with scratch_postgres("lms_proxy") as url:
        yield url


@pytest.fixture(scope="module")
def scratch_redis():
    with flushed_redis(own_redis_url(4, 3)) as url:
        yield url


def _port_free_on_both() -> int:
    for _ in range(50):
        port = free_port()
        try:
            for host in HOSTS.values():
                with socket.socket() as sock:
                    sock.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on both replica addresses")


@pytest.fixture(scope="module")
def world(scratch_database, scratch_redis, tmp_path_factory):
    """{"A": server, "B": server, "proxy": NginxProxy, "dns": DnsStandin, ...}"""
    app_port, metrics_port = _port_free_on_both(), _port_free_on_both()
    base = production_env(
        scratch_database, scratch_redis, FORCE_HTTPS="True", **APP_TRUSTS_THE_PROXY,
        METRICS_PORT=str(metrics_port), CATALOG_CACHE_SECONDS="300",
        RATE_LIMIT_PUBLIC="1000 per minute",
        RATE_LIMIT_PASSWORD_RESET_REQUEST=f"{RESET_LIMIT} per minute")
    run_flask(base, "db", "upgrade")
    logs = tmp_path_factory.mktemp("replicas")
    servers = {name: GunicornServer({**base, "METRICS_ADDRESS": host}, logs / f"{name}.log",
                                    workers=2, port=app_port, host=host)
               for name, host in HOSTS.items()}
    dns = DnsStandin("web", list(HOSTS.values()))
    proxy = NginxProxy(tmp_path_factory.mktemp("proxy"), upstream=f"web:{app_port}",
                       resolver_port=dns.port)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(s.start, ready_timeout=40) for s in servers.values()]:
                future.result()
        proxy.start()
        yield {**servers, "proxy": proxy, "dns": dns, "app_port": app_port,
               "metrics_port": metrics_port, "database": scratch_database,
               "redis": scratch_redis}
    finally:
        proxy.stop()
        dns.stop()
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(GunicornServer.stop, servers.values()))


# --- helpers -----------------------------------------------------------------------------------

def send(world, method: str, target: str, *, source: str = "127.0.0.1", tls: bool = True,
         headers: dict | None = None, body=None, chunked: bool = False) -> Reply:
    """One request to the proxy on a new connection from `source`."""
    proxy = world["proxy"]
    request_id = f"px-{uuid.uuid4().hex}"
    if tls:
        context = ssl.create_default_context(cafile=proxy.ca_file)
        conn = http.client.HTTPSConnection("127.0.0.1", proxy.https_port, context=context,
                                           timeout=30, source_address=(source, 0))
    else:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=30,
                                          source_address=(source, 0))
    port = proxy.https_port if tls else proxy.http_port
    authority = target.split("/")[2] if target.startswith("http") else f"127.0.0.1:{port}"
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        sent = {"Host": authority, "X-Request-ID": request_id, "Connection": "close",
                **(headers or {})}
        if chunked:
            sent["Transfer-Encoding"] = "chunked"
        elif body is not None:
            sent["Content-Length"] = str(len(body))
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.endheaders()
        try:  # the proxy may answer, and stop reading, before the body is all sent
            if chunked:
                for start in range(0, len(body), 1 << 20):
                    piece = body[start:start + (1 << 20)]
                    conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                conn.send(b"0\r\n\r\n")
            elif body is not None:
                conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = conn.getresponse()
        return Reply(request_id, response.status, response.headers,
                     response.read().decode("utf-8", "replace"))
    finally:
        conn.close()


def served_by(world, reply: Reply) -> str | None:
    """"A" or "B": the server whose request log has this request; None when none has."""
    found = [name for name in HOSTS if reply.request_id in world[name].request_log()]
    assert len(found) <= 1, found
    return found[0] if found else None


def app_entry(world, reply: Reply) -> dict:
    name = served_by(world, reply)
    assert name is not None, f"{reply.request_id} never reached the app"
    return world[name].request_log()[reply.request_id]


def wait_for_dns(world) -> None:
    """Let the proxy's cached answer expire: NGINX_RESOLVER_VALID is 1 s here, which nginx
    counts in whole seconds of its clock, so an answer may serve up to 2 s."""
    time.sleep(2.5)


def assert_proxy_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, (reply.status, reply.text)
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json["code"] == code and reply.json["error"], reply.text
    assert reply.headers["X-Request-ID"] == reply.request_id


# --- balancing and scaling ------------------------------------------------------------------------

def test_requests_are_balanced_across_both_servers(world):
    replies = [send(world, "GET", f"{API}/health") for _ in range(40)]

    assert all(r.status == 200 and r.json == {"status": "ok"} for r in replies)
    assert all(r.headers["X-Request-ID"] == r.request_id for r in replies)
    hosts = [served_by(world, r) for r in replies]
    assert None not in hosts
    assert set(hosts) == {"A", "B"}, hosts
    assert min(hosts.count("A"), hosts.count("B")) >= 5, hosts
    upstreams = {entry["upstream"] for entry in world["proxy"].access_log()
                 if entry["request_id"] in {r.request_id for r in replies}}
    assert upstreams == {f"{host}:{world['app_port']}" for host in HOSTS.values()}


def test_replicas_are_found_as_the_service_scales_without_a_reload(world):
    dns, port = world["dns"], world["app_port"]
    try:
        # Scaled down to one replica.
        dns.set_addresses([HOSTS["A"]])
        wait_for_dns(world)
        replies = [send(world, "GET", f"{API}/health") for _ in range(10)]
        assert [served_by(world, r) for r in replies] == ["A"] * 10

        # A replica listed before it listens (starting, or stopping): the request is retried
        # on the next address, and no answer fails.
        dns.set_addresses([HOSTS["A"], NOBODY])
        wait_for_dns(world)
        replies = [send(world, "GET", f"{API}/health") for _ in range(30)]
        assert [r.status for r in replies] == [200] * 30
        assert [served_by(world, r) for r in replies] == ["A"] * 30
        ids = {r.request_id for r in replies}
        tried = [entry["upstream"] for entry in world["proxy"].access_log()
                 if entry["request_id"] in ids]
        assert f"{NOBODY}:{port}, {HOSTS['A']}:{port}" in tried, tried

        # No replica listening: the proxy answers in the API's error shape.
        dns.set_addresses([NOBODY])
        wait_for_dns(world)
        down = send(world, "GET", f"{API}/health")
        assert_proxy_error(down, 503, "service_unavailable")
        assert down.headers["Retry-After"] == "5"
        assert served_by(world, down) is None

        # Scaled back up: both serve again, with no reload of the proxy.
        dns.set_addresses(list(HOSTS.values()))
        wait_for_dns(world)
        replies = [send(world, "GET", f"{API}/health") for _ in range(30)]
        assert {served_by(world, r) for r in replies} == {"A", "B"}
    finally:
        dns.set_addresses(list(HOSTS.values()))
        wait_for_dns(world)


# --- the client's address ---------------------------------------------------------------------------

FORGED = {"X-Forwarded-For": "203.0.113.9, 10.0.0.1", "X-Real-IP": "203.0.113.9",
          "Forwarded": "for=203.0.113.9;proto=https", "X-Forwarded-Host": "evil.example",
          "X-Forwarded-Port": "8443", "X-Forwarded-Ssl": "off"}


def test_the_app_sees_the_address_the_proxy_saw_whatever_the_client_wrote(world):
    plain = send(world, "GET", f"{API}/health", source="127.0.0.5")
    forged = send(world, "GET", f"{API}/health", source="127.0.0.5", headers=FORGED)

    for reply in (plain, forged):
        assert reply.status == 200, reply.text
        assert app_entry(world, reply)["remote_addr"] == "127.0.0.5"


def test_rate_limits_hold_whatever_x_forwarded_for_says(world):
    path = f"{API}/auth/password-reset/request"
    body = json.dumps({"email": "nobody@example.com"}).encode()
    headers = {"Content-Type": "application/json"}

    replies = [send(world, "POST", path, source="127.0.0.6", body=body,
                    headers={**headers, "X-Forwarded-For": f"198.51.100.{n}"})
               for n in range(RESET_LIMIT + 2)]

    assert [r.status for r in replies] == [200] * RESET_LIMIT + [429, 429], [
        (r.status, r.text) for r in replies]
    assert replies[-1].json["code"] == "rate_limited"
    assert {app_entry(world, r)["remote_addr"] for r in replies} == {"127.0.0.6"}
    # Another client is not refused for it, even one claiming to be 127.0.0.6.
    other = send(world, "POST", path, source="127.0.0.7", body=body,
                 headers={**headers, "X-Forwarded-For": "127.0.0.6"})
    assert other.status == 200, other.text
    assert app_entry(world, other)["remote_addr"] == "127.0.0.7"


def test_ip_blocks_hold_whatever_x_forwarded_for_says(world):
    from utils.pipeline.blocked_ips import block_ip

    admin_side = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(world["database"]),
        "REDIS_URL": world["redis"]})
    with admin_side.app_context():
        block_ip("127.0.0.8", seconds=600, reason="proxy test")
        db.session.remove()
        db.engine.dispose()

    # (Health probes are never refused; a public read is.)
    blocked = send(world, "GET", f"{API}/public/categories", source="127.0.0.8",
                   headers={"X-Forwarded-For": "198.51.100.200"})
    claimed = send(world, "GET", f"{API}/public/categories", source="127.0.0.9",
                   headers={"X-Forwarded-For": "127.0.0.8"})

    assert blocked.status == 403 and blocked.json["code"] == "ip_blocked", blocked.text
    assert app_entry(world, blocked)["remote_addr"] == "127.0.0.8"
    assert claimed.status == 200, claimed.text
    assert app_entry(world, claimed)["remote_addr"] == "127.0.0.9"


# --- TLS -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "POST"])
def test_plain_http_is_redirected_to_https_by_the_proxy(world, method):
    reply = send(world, method, f"{API}/courses?page=2", tls=False,
                 headers={"X-Forwarded-Proto": "https"}, body=b"{}" if method == "POST" else None)

    assert reply.status == 301
    assert reply.headers["Location"] == (f"https://127.0.0.1:{world['proxy'].https_port}"
                                         f"{API}/courses?page=2")
    assert reply.headers["X-Request-ID"] == reply.request_id
    assert served_by(world, reply) is None


def test_https_is_served_and_the_app_knows_it(world):
    proxy = world["proxy"]
    context = ssl.create_default_context(cafile=proxy.ca_file)
    with socket.create_connection(("127.0.0.1", proxy.https_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")

    reply = send(world, "GET", f"{API}/courses")

    # FORCE_HTTPS is on, as in production: the app redirects plain HTTP itself...
    direct = requests.get(f"{world['A'].base_url}{API}/courses", allow_redirects=False,
                          timeout=10)
    assert direct.status_code in (301, 302), direct.text
    assert direct.headers["Location"].startswith("https://")
    # ...but not what came through the proxy over TLS: it believes the proxy's scheme.
    assert reply.status == 200, reply.text
    assert "courses" in reply.json
    assert "max-age=" in reply.headers["Strict-Transport-Security"]
    assert served_by(world, reply) in HOSTS


# --- uploads ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_51_mb_upload_is_refused_by_the_proxy(world, chunked):
    body = b"\0" * (51 * 1024 * 1024)

    reply = send(world, "POST", f"{API}/files/upload", body=body, chunked=chunked,
                 headers={"Content-Type": "application/octet-stream"})

    assert_proxy_error(reply, 413, "payload_too_large")
    assert reply.json["error"] == f"Request body too large: the limit is {UPLOAD_LIMIT} bytes"
    assert served_by(world, reply) is None


def test_an_upload_within_the_limit_reaches_the_app(world):
    reply = send(world, "POST", f"{API}/files/upload", body=b"\0" * (1024 * 1024),
                 headers={"Content-Type": "application/octet-stream"})

    assert reply.status == 401, reply.text  # the app's answer: no token
    assert set(reply.json) >= {"error", "code"}
    assert served_by(world, reply) in HOSTS


# --- nothing but the proxy ---------------------------------------------------------------------------

@pytest.fixture
def canary():
    """A listening port that counts the connections it gets."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    state = {"connections": 0, "running": True}

    def accept():
        while state["running"]:
            try:
                conn, _ = sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            state["connections"] += 1
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1], state
    state["running"] = False
    thread.join(timeout=2)
    sock.close()


def test_the_proxy_reaches_nothing_but_the_app(world, canary):
    port, state = canary
    metrics = f"http://{HOSTS['A']}:{world['metrics_port']}/metrics"

    absolute = send(world, "GET", f"http://127.0.0.1:{port}/anything")
    host_header = send(world, "GET", "/anything", headers={"Host": f"127.0.0.1:{port}"})
    connect = send(world, "CONNECT", f"127.0.0.1:{port}")
    to_metrics = send(world, "GET", metrics)
    plain_metrics = send(world, "GET", "/metrics")

    assert state["connections"] == 0
    for reply in (absolute, host_header, to_metrics, plain_metrics):
        # Whatever the request names, the app answers it (and has no /metrics route).
        assert reply.status == 404, reply.text
        assert reply.json["code"] == "not_found"
        assert "lms_http_requests_total" not in reply.text
        assert served_by(world, reply) in HOSTS
    assert connect.status in (400, 405), connect.text
    assert served_by(world, connect) is None


def test_the_metrics_port_is_there_but_not_behind_the_proxy(world):
    """The metrics the proxy does not forward are served on the replica's own port."""
    response = requests.get(f"http://{HOSTS['B']}:{world['metrics_port']}/metrics", timeout=10)

    assert response.status_code == 200
    assert "lms_http_requests_total" in response.text


# --- the public catalog's cache -----------------------------------------------------------------------

def test_guest_catalog_answers_are_served_from_the_proxys_cache(world):
    path = f"{API}/public/get-categories?cache-test={uuid.uuid4().hex[:6]}"

    first = send(world, "GET", path)
    second = send(world, "GET", path)
    revalidated = send(world, "GET", path, headers={"If-None-Match": first.headers["ETag"]})
    signed_in = send(world, "GET", path, headers={"Authorization": "Bearer not-a-real-token"})

    assert first.status == 200 and first.headers["X-Cache-Status"] == "MISS"
    assert first.headers["Cache-Control"] == "public, max-age=300"
    assert served_by(world, first) in HOSTS
    # The second guest is answered by the proxy: same body and ETag, its own request id.
    assert second.status == 200 and second.headers["X-Cache-Status"] == "HIT"
    assert (second.text, second.headers["ETag"]) == (first.text, first.headers["ETag"])
    assert second.headers["X-Request-ID"] == second.request_id
    assert served_by(world, second) is None
    assert revalidated.status == 304 and served_by(world, revalidated) is None
    # A signed-in caller always reaches the app, and its answer is not kept.
    assert signed_in.headers["X-Cache-Status"] == "BYPASS"
    assert served_by(world, signed_in) in HOSTS
