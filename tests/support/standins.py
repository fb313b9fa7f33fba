"""Local stand-ins for the external services, for tests that drive the REAL SDKs over the
network edge (never by mocking our own functions). Each listens on a free port on 127.0.0.1 in
a background thread; `start()` returns the stand-in, `stop()` frees the port, and each is also
a context manager.

- TwilioVerifyStub: Twilio Verify v2 (`client.verify.base_url = stub.url`).
- GoogleCerts: an RSA key and self-signed certificate served as Google's `{kid: pem}` certs
  document, and RS256 ID tokens signed with it (or with another key).
- SendGridStub: SendGrid's v3 mail send (`SendGridAPIClient(key, host=stub.url)`).
- smtp_server(): an aiosmtpd SMTP server collecting what it receives.
"""
from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (also: a 'service down' address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_url() -> str:
    """The URL of a port with no server behind it: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, str] = field(default_factory=dict)
    json: Any = None

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        value = self.headers.get("Authorization", "")
        if not value.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        return user, password


# --- a small threaded HTTP server -------------------------------------------------------------

class _HTTPStub:
    """Base: a ThreadingHTTPServer whose handler calls `self.handle(request)`, which returns
    (status, json_body). Every request is kept in `self.requests`."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # subclasses answer here
    def handle(self, request: ReceivedRequest) -> tuple[int, Any]:  # pragma: no cover
        raise NotImplementedError

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = ReceivedRequest(
                    method=self.command, path=urlsplit(self.path).path,
                    headers={k: v for k, v in self.headers.items()}, body=body)
                content_type = self.headers.get("Content-Type", "")
                if "application/x-www-form-urlencoded" in content_type:
                    request.form = {k: v[-1] for k, v in
                                    parse_qs(body.decode(), keep_blank_values=True).items()}
                elif "json" in content_type and body:
                    try:
                        request.json = json.loads(body)
                    except ValueError:
                        request.json = None
                with stub._lock:
                    stub.requests.append(request)
                    status, payload = stub.handle(request)
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def requests_to(self, suffix: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path.endswith(suffix)]


# --- Twilio Verify v2 -------------------------------------------------------------------------

def _twilio_sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _twilio_error(status: int, code: int, message: str) -> tuple[int, dict]:
    return status, {"code": code, "message": message,
                    "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}


class TwilioVerifyStub(_HTTPStub):
    """Twilio Verify v2: `POST /v2/Services/<sid>/Verifications` (To, Channel) creates a pending
    verification; `POST /v2/Services/<sid>/VerificationCheck` (To, Code) approves it when Code
    is the stub's code for that number (`codes[to]`, else `default_code`), else answers it still
    pending; with no pending verification for the number it answers 404 (Twilio error 20404),
    as Twilio does once a verification expired or was approved.

    With `account_sid`/`auth_token` given, requests without that HTTP Basic auth get 401."""

    def __init__(self, account_sid: str | None = None, auth_token: str | None = None,
                 default_code: str = "123456") -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.default_code = default_code
        self.codes: dict[str, str] = {}
        self.pending: dict[str, dict] = {}  # to -> verification resource

    def code_for(self, to: str) -> str:
        return self.codes.get(to, self.default_code)

    def handle(self, request: ReceivedRequest) -> tuple[int, Any]:
        if self.account_sid is not None and request.basic_auth != (self.account_sid,
                                                                   self.auth_token):
            return _twilio_error(401, 20003, "Authenticate")
        parts = request.path.strip("/").split("/")
        # v2 / Services / <sid> / Verifications | VerificationCheck
        if request.method != "POST" or len(parts) != 4 or parts[:2] != ["v2", "Services"]:
            return _twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        service_sid, action = parts[2], parts[3]
        to = request.form.get("To", "")
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if action == "Verifications":
            if not to:
                return _twilio_error(400, 60200, "Invalid parameter `To`")
            resource = self.pending.get(to)
            if resource is None:
                sid = _twilio_sid("VE")
                resource = {
                    "sid": sid, "service_sid": service_sid,
                    "account_sid": self.account_sid or _twilio_sid("AC"),
                    "to": to, "channel": request.form.get("Channel", "sms"),
                    "status": "pending", "valid": False, "lookup": {}, "amount": None,
                    "payee": None, "send_code_attempts": [], "date_created": now,
                    "date_updated": now, "sna": None,
                    "url": f"{self.url}/v2/Services/{service_sid}/Verifications/{sid}",
                }
                self.pending[to] = resource
            resource["channel"] = request.form.get("Channel", resource["channel"])
            resource["send_code_attempts"].append(
                {"attempt_sid": _twilio_sid("VL"), "channel": resource["channel"], "time": now})
            resource["date_updated"] = now
            return 201, resource
        if action == "VerificationCheck":
            resource = self.pending.get(to)
            if resource is None:
                return _twilio_error(
                    404, 20404,
                    f"The requested resource /Services/{service_sid}/VerificationCheck was not found")
            approved = request.form.get("Code") == self.code_for(to)
            answer = {key: resource[key] for key in
                      ("sid", "service_sid", "account_sid", "to", "channel", "amount", "payee",
                       "date_created", "sna")}
            answer.update(status="approved" if approved else "pending", valid=approved,
                          date_updated=now, sna_attempts_error_codes=[])
            if approved:
                del self.pending[to]
            return 200, answer
        return _twilio_error(404, 20404, f"The requested resource {request.path} was not found")


# --- Google ID tokens ---------------------------------------------------------------------------

def new_rsa_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def self_signed_cert_pem(key_pem: str, common_name: str = "test-google-certs") -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class GoogleCerts(_HTTPStub):
    """Serves `{kid: x509 PEM}` at /certs (what google.oauth2.id_token.verify_token fetches) and
    makes RS256 ID tokens. `make_token({...overrides}, kid=..., key=...)`: an override of None
    removes that claim; `key` (a PEM) signs with another private key."""

    ISSUER = "https://accounts.google.com"

    def __init__(self, client_id: str = "student-client", kid: str | None = None) -> None:
        super().__init__()
        self.client_id = client_id
        self.kid = kid or uuid.uuid4().hex
        self.key_pem = new_rsa_key_pem()
        self.certs = {self.kid: self_signed_cert_pem(self.key_pem)}

    @property
    def certs_url(self) -> str:
        return f"{self.url}/certs"

    def handle(self, request: ReceivedRequest) -> tuple[int, Any]:
        if request.method == "GET" and request.path == "/certs":
            return 200, self.certs
        return 404, {"error": "not found"}

    def claims(self, overrides: dict | None = None) -> dict:
        now = int(time.time())
        claims = {
            "iss": self.ISSUER,
            "azp": self.client_id,
            "aud": self.client_id,
            "sub": "1098765432123456789",
            "email": "ada.lovelace@gmail.com",
            "email_verified": True,
            "name": "Ada Lovelace",
            "given_name": "Ada",
            "family_name": "Lovelace",
            "iat": now,
            "exp": now + 3600,
        }
        for name, value in (overrides or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def make_token(self, claims_overrides: dict | None = None, *, kid: str | None = None,
                   key: str | None = None) -> str:
        from google.auth import crypt, jwt

        signer = crypt.RSASigner.from_string(key or self.key_pem, key_id=kid or self.kid)
        token = jwt.encode(signer, self.claims(claims_overrides))
        return token.decode() if isinstance(token, bytes) else token


# --- SendGrid -----------------------------------------------------------------------------------

class SendGridStub(_HTTPStub):
    """`POST /v3/mail/send`: records the JSON body and Authorization header, answers 202
    (or `fail_status`, e.g. 500, with SendGrid's error body)."""

    def __init__(self, fail_status: int | None = None) -> None:
        super().__init__()
        self.fail_status = fail_status

    @property
    def sent(self) -> list[ReceivedRequest]:
        return self.requests_to("/v3/mail/send")

    def handle(self, request: ReceivedRequest) -> tuple[int, Any]:
        if request.method != "POST" or request.path != "/v3/mail/send":
            return 404, {"errors": [{"message": "Not found", "field": None, "help": None}]}
        if self.fail_status:
            return self.fail_status, {"errors": [{"message": "Internal server error",
                                                  "field": None, "help": None}]}
        return 202, None


# --- SMTP ----------------------------------------------------------------------------------------

@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: email.message.EmailMessage


class _CollectingHandler:
    def __init__(self, sink: "SMTPSink") -> None:
        self.sink = sink

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content or envelope.content,
                                           policy=email.policy.default)
        self.sink.messages.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos),
                                               message))
        return "250 Message accepted for delivery"


class SMTPSink:
    """An aiosmtpd server on 127.0.0.1:<free port>; `messages` lists what it received."""

    def __init__(self) -> None:
        self.messages: list[ReceivedMail] = []
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._controller = None

    def start(self) -> "SMTPSink":
        from aiosmtpd.controller import Controller

        # Controller(port=0) fails its own start-up check (it connects to port 0): pick a port.
        for _attempt in range(5):
            port = free_port()
            controller = Controller(_CollectingHandler(self), hostname=self.host, port=port)
            try:
                controller.start()
            except OSError:  # the port was taken in between; try another
                continue
            self._controller, self.port = controller, port
            return self
        raise RuntimeError("could not start the SMTP stand-in")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> "SMTPSink":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def smtp_server() -> SMTPSink:
    """A started SMTP stand-in (call `.stop()`, or use it in a `with` block)."""
    return SMTPSink().start()
