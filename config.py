"""Configuration classes, read from the environment (and `.env`) once, here.

`create_app(name)` picks one of CONFIGS; with nothing set it is the embedded development default:
SQLite at instance/dev.db, in-memory rate limits, mail and OTP codes written to the log.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from dotenv import load_dotenv
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

BASE_DIR = Path(__file__).resolve().parent
INSTANCE_DIR = BASE_DIR / "instance"

load_dotenv(BASE_DIR / ".env")


class ConfigError(RuntimeError):
    """The environment cannot run the chosen configuration (a missing secret, say)."""


def env(name: str, default: str | None = None) -> str | None:
    """The variable, stripped; unset or empty means `default`. (python-dotenv already drops
    inline comments from `.env` lines; a real environment value is taken as it is, so a secret
    containing " #" survives.)"""
    value = os.environ.get(name)
    if value is None:
        return default
    value = value.strip()
    return value if value != "" else default


def env_bool(name: str, default: bool) -> bool:
    value = env(name)
    if value is None:
        return default
    return value.lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = env(name)
    return default if value is None else int(value)


def limiter_storage_uri(url: str) -> str:
    """Flask-Limiter's storage for a URL: a Redis URL gets the `lms+redis` scheme, limits'
    Redis storage that counts in the request's one Redis round trip
    (utils/pipeline/round_trip.py); any other (memory://, memcached://...) is limits' own."""
    scheme = url.partition("://")[0]
    return f"lms+{url}" if scheme in ("redis", "rediss") else url


def normalise_database_url(url: str) -> str:
    """Hosting platforms hand out `postgres://` and `postgresql://`; SQLAlchemy 2.1 would pick
    psycopg 3 for the latter, and we ship psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def database_engine_options(url: str) -> dict:
    """SQLAlchemy engine options for `url`, from the environment (DATABASE_* settings).

    On PostgreSQL a database that is down, stuck or overloaded must cost a request a bounded
    time and a 503, never a worker: a connect timeout, a server-side statement timeout (0 turns
    it off, e.g. for a long migration), a bounded pool whose waiters give up after
    DATABASE_POOL_TIMEOUT, connections recycled, and TCP keepalives for a peer that vanished
    without closing. A pooled connection is pinged before use only after it sat idle
    (`ping_when_idle`, which the engine's owner attaches: a restarted server is noticed on
    checkout without a round trip on every request of a busy worker). Other databases (SQLite)
    get the plain ping: psycopg2's arguments would break sqlite3.connect."""
    if not url.startswith(("postgresql", "postgres://")):
        return {"pool_pre_ping": True}
    connect_args: dict = {"connect_timeout": env_int("DATABASE_CONNECT_TIMEOUT", 3),
                          "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                          "keepalives_count": 3}
    statement_timeout = env_int("DATABASE_STATEMENT_TIMEOUT_MS", 30000)
    if statement_timeout > 0:
        connect_args["options"] = f"-c statement_timeout={statement_timeout}"
    return {"pool_pre_ping": False,
            "pool_size": env_int("DATABASE_POOL_SIZE", 5),
            "max_overflow": env_int("DATABASE_MAX_OVERFLOW", 5),
            "pool_timeout": env_int("DATABASE_POOL_TIMEOUT", 5),
            "pool_recycle": env_int("DATABASE_POOL_RECYCLE", 1800),
            "connect_args": connect_args}


def ping_when_idle(engine: Engine, seconds: float | None = None) -> None:
    """Ping a pooled connection on checkout when it has been idle for more than `seconds`
    (DATABASE_PING_IDLE_SECONDS): one that failed is replaced before the request sees it, as
    `pool_pre_ping` does, without the extra round trip on every request of a busy worker (a
    connection returned a moment ago is alive, or the server went down while it was in use,
    which the request's own statement reports as a 503 and which invalidates the pool).
    Only PostgreSQL engines get it (database_engine_options gives others `pool_pre_ping`)."""
    if engine.dialect.name != "postgresql":
        return
    idle = env_int("DATABASE_PING_IDLE_SECONDS", 1) if seconds is None else seconds

    def returned(dbapi_connection, record) -> None:
        record.info["lms_returned_at"] = time.monotonic()

    def checked_out(dbapi_connection, record, proxy) -> None:
        returned_at = record.info.get("lms_returned_at")
        if returned_at is not None and time.monotonic() - returned_at <= idle:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure: the pool replaces the connection and retries
            raise DisconnectionError(f"idle connection failed its ping: {exc}") from exc

    event.listen(engine, "checkin", returned)
    event.listen(engine, "checkout", checked_out)


def _dev_secret(name: str) -> str:
    """A random secret kept in instance/, so a development server needs no `.env` and its
    tokens survive a restart, without any secret being written into the code."""
    INSTANCE_DIR.mkdir(exist_ok=True)
    path = INSTANCE_DIR / f".{name.lower()}"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _dev_signing_material(folder: Path) -> dict[str, str]:
    """Signing keys for a development or test server, generated into `folder` on first use
    (never used in production, which must be given its own): an Ed25519 key for the Open
    Badges credentials and an ECDSA P-256 key with a self-signed certificate for the PDFs.
    Returns the settings naming the files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"CREDENTIAL_SIGNING_KEY": folder / "credential-signing-key.pem",
             "PDF_SIGNING_KEY": folder / "pdf-signing-key.pem",
             "PDF_SIGNING_CERT": folder / "pdf-signing-cert.pem"}

    def write(path: Path, data: bytes) -> None:
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_bytes(data)
        scratch.chmod(0o600)
        scratch.replace(path)

    # Processes starting at once (test runs side by side) make one set of keys, not a key
    # from one and a certificate from another.
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _generate_missing(paths, write)
    return {name: str(path) for name, path in paths.items()}


def _generate_missing(paths: dict[str, Path], write) -> None:
    pem = serialization.Encoding.PEM
    pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    if not paths["CREDENTIAL_SIGNING_KEY"].exists():
        key = ed25519.Ed25519PrivateKey.generate()
        write(paths["CREDENTIAL_SIGNING_KEY"], key.private_bytes(pem, pkcs8, plain))
    if not (paths["PDF_SIGNING_KEY"].exists() and paths["PDF_SIGNING_CERT"].exists()):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, f"{env('APP_NAME', 'AI First Academy')} (development)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, env("APP_NAME", "AI First Academy"))])
        now = datetime.now(timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=True, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        write(paths["PDF_SIGNING_KEY"], key.private_bytes(pem, pkcs8, plain))
        write(paths["PDF_SIGNING_CERT"], cert.public_bytes(pem))


class Config:
    APP_NAME = env("APP_NAME", "AI First Academy")
    API_PREFIX = "/api/v1"
    PUBLIC_BASE_URL = env("PUBLIC_BASE_URL", "http://127.0.0.1:5000").rstrip("/")

    SECRET_KEY = env("SESSION_SECRET")
    JSON_SORT_KEYS = False

    # Database
    SQLALCHEMY_DATABASE_URI = normalise_database_url(env("DATABASE_URL", "") or "")
    SQLALCHEMY_ENGINE_OPTIONS = database_engine_options(SQLALCHEMY_DATABASE_URI)
    SQLALCHEMY_RECORD_QUERIES = False

    # JWT
    JWT_SECRET_KEY = env("JWT_SECRET_KEY")
    JWT_ACCESS_TOKEN_EXPIRES = env_int("JWT_ACCESS_TOKEN_EXPIRES", 3600)
    JWT_REFRESH_TOKEN_EXPIRES = env_int("JWT_REFRESH_TOKEN_EXPIRES", 2592000)
    JWT_TOKEN_LOCATION = ["headers"]
    JWT_ERROR_MESSAGE_KEY = "error"

    # Redis: rate limits, the JWT blocklist, shared security state. None = not configured.
    REDIS_URL = env("REDIS_URL")
    RATELIMIT_ENABLED = env_bool("RATELIMIT_ENABLED", True)
    RATELIMIT_STORAGE_URI = limiter_storage_uri(
        env("RATE_LIMIT_STORAGE_URL") or env("REDIS_URL") or "memory://")
    # X-RateLimit-* headers: "writes" (POST, PUT, PATCH, DELETE), "all" or "none". Each costs a
    # Redis read, which reads (the hot path) are spared by default; 429s always say Retry-After.
    RATE_LIMIT_HEADERS = env("RATE_LIMIT_HEADERS", "writes")
    RATELIMIT_HEADERS_ENABLED = RATE_LIMIT_HEADERS == "all"
    RATELIMIT_DEFAULT = env("RATELIMIT_DEFAULT", "")
    RATE_LIMIT_REGISTER = env("RATE_LIMIT_REGISTER", "5 per hour")
    RATE_LIMIT_LOGIN = env("RATE_LIMIT_LOGIN", "10 per 15 minutes")
    RATE_LIMIT_REFRESH = env("RATE_LIMIT_REFRESH", "20 per hour")
    RATE_LIMIT_PASSWORD_RESET_REQUEST = env("RATE_LIMIT_PASSWORD_RESET_REQUEST", "3 per hour")
    RATE_LIMIT_PASSWORD_RESET_VERIFY = env("RATE_LIMIT_PASSWORD_RESET_VERIFY", "5 per hour")
    RATE_LIMIT_PUBLIC = env("RATE_LIMIT_PUBLIC", "30 per minute")
    RATE_LIMIT_SEARCH = env("RATE_LIMIT_SEARCH", "20 per minute")
    RATE_LIMIT_CONTACT = env("RATE_LIMIT_CONTACT", "5 per hour")
    # Addresses or networks of the reverse proxies whose X-Forwarded-For / -Proto / -Host the
    # app believes (utils/pipeline/client_address.py); empty: none, the socket's peer is the
    # client. "0", the old "no proxy" count, means none too.
    TRUSTED_PROXIES = tuple(
        part.strip() for part in (env("TRUSTED_PROXIES") or "").split(",")
        if part.strip() and part.strip() != "0")

    # Accounts and security
    # New password hashes (utils/passwords.py): "argon2id" (OWASP: m = 19 MiB, t = 2, p = 1) or
    # "pbkdf2" (Werkzeug's PASSWORD_HASH_METHOD, the spec's scheme). Either way both kinds verify
    # and a hash in another scheme or cost is rewritten at its owner's next sign-in.
    PASSWORD_HASH_SCHEME = env("PASSWORD_HASH_SCHEME", "argon2id")
    PASSWORD_HASH_METHOD = env("PASSWORD_HASH_METHOD", "pbkdf2:sha256:600000")
    ARGON2_MEMORY_KIB = env_int("ARGON2_MEMORY_KIB", 19456)
    ARGON2_TIME_COST = env_int("ARGON2_TIME_COST", 2)
    ARGON2_PARALLELISM = env_int("ARGON2_PARALLELISM", 1)
    # Password hashing at once per host (utils/pipeline/hash_slots.py; gunicorn.conf.py sets it to
    # cores - 1); past PASSWORD_HASH_WAIT_MS without a slot, a sign-in answers 503 busy.
    PASSWORD_HASH_SLOTS = env_int("PASSWORD_HASH_SLOTS", 0)
    PASSWORD_HASH_WAIT_MS = env_int("PASSWORD_HASH_WAIT_MS", 50)
    PASSWORD_HASH_SLOT_DIR = env("PASSWORD_HASH_SLOT_DIR")
    OTP_REQUIRED = env_bool("OTP_REQUIRED", True)
    OTP_LENGTH = env_int("OTP_LENGTH", 6)
    OTP_EXPIRY_SECONDS = env_int("OTP_EXPIRY_SECONDS", 600)
    OTP_MAX_ATTEMPTS = env_int("OTP_MAX_ATTEMPTS", 5)
    PHONE_VERIFIED_WINDOW_SECONDS = env_int("PHONE_VERIFIED_WINDOW_SECONDS", 1800)
    LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5)
    LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 1800)
    # A device or address that signed in to an account within this many days is not locked
    # out by failures from other sources.
    LOGIN_TRUSTED_SOURCE_DAYS = env_int("LOGIN_TRUSTED_SOURCE_DAYS", 90)
    PASSWORD_RESET_TOKEN_SECONDS = env_int("PASSWORD_RESET_TOKEN_SECONDS", 3600)
    IP_BLOCK_SECONDS = env_int("IP_BLOCK_SECONDS", 3600)
    # An address is blocked when, within the window, it fails logins for this many distinct
    # accounts, or trips the injection checks this many times.
    IP_BLOCK_WINDOW_SECONDS = env_int("IP_BLOCK_WINDOW_SECONDS", 900)
    IP_BLOCK_MAX_ACCOUNTS = env_int("IP_BLOCK_MAX_ACCOUNTS", 5)
    IP_BLOCK_MAX_UNSAFE_INPUTS = env_int("IP_BLOCK_MAX_UNSAFE_INPUTS", 10)
    PASSWORD_RESET_URL = env("PASSWORD_RESET_URL")

    # Mail: "smtp" (Flask-Mail), "sendgrid", or "console" (written to the log).
    MAIL_BACKEND = env("MAIL_BACKEND")
    MAIL_SERVER = env("MAIL_SERVER")
    MAIL_PORT = env_int("MAIL_PORT", 587)
    MAIL_USE_TLS = env_bool("MAIL_USE_TLS", True)
    MAIL_USE_SSL = env_bool("MAIL_USE_SSL", False)
    MAIL_USERNAME = env("MAIL_USERNAME")
    MAIL_PASSWORD = env("MAIL_PASSWORD")
    MAIL_DEFAULT_SENDER = env("MAIL_DEFAULT_SENDER", "noreply@aifirstacademy.com")
    SENDGRID_API_KEY = env("SENDGRID_API_KEY")
    SENDGRID_API_HOST = env("SENDGRID_API_HOST")

    # SMS / OTP through Twilio Verify; console provider when unset.
    TWILIO_ACCOUNT_SID = env("TWILIO_ACCOUNT_SID")
    TWILIO_AUTH_TOKEN = env("TWILIO_AUTH_TOKEN")
    TWILIO_VERIFY_SERVICE_SID = env("TWILIO_VERIFY_SERVICE_SID")
    TWILIO_API_BASE = env("TWILIO_API_BASE")
    # "twilio" or "console" (codes written to the log); production never uses the console.
    SMS_BACKEND = env("SMS_BACKEND") or ("twilio" if env("TWILIO_ACCOUNT_SID") else "console")
    # At most this many codes are sent to one phone number per hour, whatever the client IP.
    OTP_MAX_SENDS_PER_HOUR = env_int("OTP_MAX_SENDS_PER_HOUR", 5)

    # Payments
    STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY")
    STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET")
    STRIPE_API_BASE = env("STRIPE_API_BASE")
    # Seconds a call to a payment gateway may take before the request gives up with 503 (the
    # payment stays pending; the reconciler settles it later). The SDKs' defaults are 80 s and
    # none at all.
    GATEWAY_TIMEOUT_SECONDS = float(env("GATEWAY_TIMEOUT_SECONDS") or 10)
    # Times the Stripe SDK retries a call that failed on the network (with its backoff).
    STRIPE_MAX_NETWORK_RETRIES = env_int("STRIPE_MAX_NETWORK_RETRIES", 2)
    STRIPE_SUCCESS_URL = env("STRIPE_SUCCESS_URL")
    STRIPE_CANCEL_URL = env("STRIPE_CANCEL_URL")
    RAZORPAY_KEY_ID = env("RAZORPAY_KEY_ID")
    RAZORPAY_KEY_SECRET = env("RAZORPAY_KEY_SECRET")
    RAZORPAY_WEBHOOK_SECRET = env("RAZORPAY_WEBHOOK_SECRET")
    RAZORPAY_API_BASE = env("RAZORPAY_API_BASE")
    # A pending order older than this (minutes) is not reused, and the reconciler asks the
    # gateway about it.
    PAYMENT_PENDING_TIMEOUT = env_int("PAYMENT_PENDING_TIMEOUT", 30)
    # A Razorpay order we expired can still be paid (Razorpay orders do not expire): the
    # reconciler asks about such orders again for this many hours (0: never).
    PAYMENT_EXPIRED_RECHECK_HOURS = env_int("PAYMENT_EXPIRED_RECHECK_HOURS", 24)
    # The refund policy: a payer may ask within this many days of paying, and only while no
    # certificate has been issued for the course (an admin may override both).
    REFUND_WINDOW_DAYS = env_int("REFUND_WINDOW_DAYS", 14)
    # `Idempotency-Key` on the POSTs that create money or access: the first answer is kept
    # this many hours; a request holding a key is presumed dead after IDEMPOTENCY_LOCK_SECONDS
    # (longer than any request may run: gunicorn's timeout is 120 s).
    IDEMPOTENCY_KEY_HOURS = env_int("IDEMPOTENCY_KEY_HOURS", 24)
    IDEMPOTENCY_LOCK_SECONDS = env_int("IDEMPOTENCY_LOCK_SECONDS", 150)
    RATE_LIMIT_PAYMENT_CREATE = env("RATE_LIMIT_PAYMENT_CREATE", "10 per minute")
    RATE_LIMIT_PAYMENT_VERIFY = env("RATE_LIMIT_PAYMENT_VERIFY", "20 per minute")
    # Who the invoices say sold the course.
    INVOICE_SELLER_NAME = env("INVOICE_SELLER_NAME", "AI First Academy")
    INVOICE_SELLER_ADDRESS = env("INVOICE_SELLER_ADDRESS", "")
    INVOICE_SELLER_TAX_ID = env("INVOICE_SELLER_TAX_ID", "")

    # Google sign-in: one OAuth client per SPA.
    GOOGLE_CLIENT_ID = env("GOOGLE_CLIENT_ID")
    GOOGLE_ADMIN_CLIENT_ID = env("GOOGLE_ADMIN_CLIENT_ID") or env("GOOGLE_CLIENT_ID")
    GOOGLE_CERTS_URL = env("GOOGLE_CERTS_URL")

    # CORS: the two SPAs.
    FRONTEND_URL_STUDENTS = env("FRONTEND_URL_STUDENTS", "http://localhost:3000")
    FRONTEND_URL_ADMIN = env("FRONTEND_URL_ADMIN", "http://localhost:3001")

    # Files
    UPLOAD_FOLDER = str(BASE_DIR / (env("UPLOAD_FOLDER") or "static/uploads"))
    MAX_CONTENT_LENGTH = env_int("MAX_CONTENT_LENGTH", 52428800)

    # Certificates: fonts tried in order (a TrueType font with wide script coverage first).
    CERTIFICATE_FONT_PATHS = (env("CERTIFICATE_FONT_PATHS") or
                              "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").split(":")
    CERTIFICATE_BOLD_FONT_PATHS = (env("CERTIFICATE_BOLD_FONT_PATHS") or
                                   "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf").split(":")
    RATE_LIMIT_VERIFY = env("RATE_LIMIT_VERIFY", "30 per minute")
    CERTIFICATE_BULK_BATCH = env_int("CERTIFICATE_BULK_BATCH", 200)

    # Verifiable credentials (Open Badges 3.0, services/credentials/). Each key setting is a
    # PEM, given inline or as the path of a file; production requires them, development and
    # tests generate their own into instance/.
    # The Ed25519 key that signs the credentials and status lists (the did:web issuer's key).
    CREDENTIAL_SIGNING_KEY = env("CREDENTIAL_SIGNING_KEY")
    # The key and certificate (chain) that sign the certificate PDFs (PAdES).
    PDF_SIGNING_KEY = env("PDF_SIGNING_KEY")
    PDF_SIGNING_CERT = env("PDF_SIGNING_CERT")
    # Entries per Bitstring Status List; the spec's minimum (131,072) is the herd the
    # revocation check of one credential hides in.
    CREDENTIAL_STATUS_LIST_SIZE = env_int("CREDENTIAL_STATUS_LIST_SIZE", 131072)
    # The issuer Profile's image in every credential (default: a small generated SVG).
    CREDENTIAL_ISSUER_IMAGE_URL = env("CREDENTIAL_ISSUER_IMAGE_URL")
    # Seconds browsers and proxies may keep the public status list (revocations show after
    # at most this long to a verifier that caches it).
    CREDENTIAL_STATUS_CACHE_SECONDS = env_int("CREDENTIAL_STATUS_CACHE_SECONDS", 60)

    # Redis's mirror of blocked addresses and revoked tokens is re-checked against the database
    # this often (utils/pipeline/shared_state.py).
    SHARED_SYNC_SECONDS = env_int("SHARED_SYNC_SECONDS", 60)

    # Public catalog answers to guests are cached this long in Redis (and by browsers/CDNs).
    CATALOG_CACHE_SECONDS = env_int("CATALOG_CACHE_SECONDS", 30)
    # A current cached copy is sent before Flask runs, its rate limits and the address's block
    # checked in the same single Redis round trip (utils/pipeline/catalog_fast_path.py).
    CATALOG_FAST_PATH = env_bool("CATALOG_FAST_PATH", True)
    # A learner's signed-in read (a view marked @signed_in_read) is answered before Flask runs,
    # its token, the shared state and its rate limits checked in the same single Redis round
    # trip (utils/pipeline/signed_in_fast_path.py).
    SIGNED_IN_FAST_PATH = env_bool("SIGNED_IN_FAST_PATH", True)
    # The reads of views marked @read_only run as server-side prepared statements on PostgreSQL
    # (planned once per connection, utils/read_only.py). Off behind a pooler in transaction
    # mode (PgBouncer `pool_mode = transaction`), where a statement prepared on one server
    # connection is not there on the next.
    DATABASE_PREPARED_STATEMENTS = env_bool("DATABASE_PREPARED_STATEMENTS", True)
    # A progress heartbeat that only reports watch time commits without waiting for the WAL
    # flush on PostgreSQL (services/enrollment_service.py): a crash can lose its last moments,
    # which the player's next heartbeat writes again. Completions always wait.
    HEARTBEAT_ASYNC_COMMIT = env_bool("HEARTBEAT_ASYNC_COMMIT", True)

    # Admin dashboard and analytics: read from this replica when set, and kept in Redis this
    # many seconds (0: computed on every request).
    DATABASE_REPLICA_URL = normalise_database_url(env("DATABASE_REPLICA_URL", "") or "") or None
    ADMIN_STATS_CACHE_SECONDS = env_int("ADMIN_STATS_CACHE_SECONDS", 30)

    # Background jobs: "rq" (a Redis queue served by `flask worker`) or "inline" (run in the
    # request that starts them). Default: rq when Redis is configured.
    JOBS_BACKEND = env("JOBS_BACKEND") or ("rq" if env("REDIS_URL") else "inline")
    JOBS_QUEUE = env("JOBS_QUEUE", "lms")
    JOB_RETRY_INTERVALS = [int(x) for x in env("JOB_RETRY_INTERVALS", "30,120,600").split(",")]
    JOB_TIMEOUT = env_int("JOB_TIMEOUT", 1800)  # seconds a job may run before it is killed
    JOB_EMAIL_BATCH = env_int("JOB_EMAIL_BATCH", 500)  # recipients a fan-out job sends at once
    # The worker's periodic tick: reconcile stale payments, requeue jobs Redis lost. 0: off.
    JOBS_TICK_SECONDS = env_int("JOBS_TICK_SECONDS", 300)

    # Live sessions
    LIVE_SESSION_JOIN_EARLY_MINUTES = env_int("LIVE_SESSION_JOIN_EARLY_MINUTES", 15)

    # Secure headers (Flask-Talisman)
    FORCE_HTTPS = env_bool("FORCE_HTTPS", False)

    # Logging: "json" (one object a line) or "text".
    LOG_FORMAT = env("LOG_FORMAT", "json")
    LOG_LEVEL = env("LOG_LEVEL", "INFO")

    # Prometheus metrics (utils/metrics.py), served by the gunicorn master on a port of their
    # own, never through the reverse proxy. 0: not served.
    METRICS_PORT = env_int("METRICS_PORT", 0)
    METRICS_ADDRESS = env("METRICS_ADDRESS", "127.0.0.1")

    # Error reporting to Sentry (utils/error_reporting.py) when a DSN is set.
    SENTRY_DSN = env("SENTRY_DSN")
    SENTRY_ENVIRONMENT = env("SENTRY_ENVIRONMENT")  # default: the configuration's name
    SENTRY_TRACES_SAMPLE_RATE = float(env("SENTRY_TRACES_SAMPLE_RATE") or 0)

    @classmethod
    def check(cls) -> None:
        """Raise ConfigError when this configuration cannot run."""


class DevelopmentConfig(Config):
    DEBUG = env_bool("DEBUG", True)
    SQLALCHEMY_DATABASE_URI = Config.SQLALCHEMY_DATABASE_URI or f"sqlite:///{INSTANCE_DIR / 'dev.db'}"
    MAIL_BACKEND = Config.MAIL_BACKEND or "console"
    OTP_REQUIRED = env_bool("OTP_REQUIRED", False)
    LOG_FORMAT = env("LOG_FORMAT", "text")

    @classmethod
    def check(cls) -> None:
        # Secrets are generated into instance/ on first use, never baked into the code.
        if not cls.SECRET_KEY:
            cls.SECRET_KEY = _dev_secret("SESSION_SECRET")
        if not cls.JWT_SECRET_KEY:
            cls.JWT_SECRET_KEY = _dev_secret("JWT_SECRET_KEY")
        _default_signing_material(cls, INSTANCE_DIR / "signing")


class TestingConfig(Config):
    TESTING = True
    SECRET_KEY = "test-session-secret"
    JWT_SECRET_KEY = "test-jwt-secret-that-is-long-enough-for-hs256"
    SQLALCHEMY_DATABASE_URI = normalise_database_url(env("TEST_DATABASE_URL") or "sqlite://")
    # Tests point one app at SQLite or PostgreSQL by overriding the URI alone, so no
    # driver-specific arguments here (psycopg2's would break sqlite3.connect).
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    REDIS_URL = env("TEST_REDIS_URL")
    RATELIMIT_STORAGE_URI = limiter_storage_uri(env("TEST_REDIS_URL") or "memory://")
    JOBS_BACKEND = "inline"  # the job tests switch to rq and run a real worker
    ADMIN_STATS_CACHE_SECONDS = 0  # tests read their own writes; the cache has its own test
    MAIL_BACKEND = "console"
    OTP_REQUIRED = False
    # Hashing at production cost (~125 ms for PBKDF2 600,000, ~25 ms for Argon2id 19 MiB) is
    # too slow for hundreds of test users. The production costs are asserted by their own test.
    PASSWORD_HASH_METHOD = "pbkdf2:sha256:1000"
    ARGON2_MEMORY_KIB = 64
    ARGON2_TIME_COST = 1
    UPLOAD_FOLDER = env("TEST_UPLOAD_FOLDER") or str(INSTANCE_DIR / "test-uploads")
    LOG_FORMAT = "text"
    LOG_LEVEL = "WARNING"

    @classmethod
    def check(cls) -> None:
        _default_signing_material(cls, INSTANCE_DIR / "test-signing")


class ProductionConfig(Config):
    DEBUG = False
    # No default: certificate QR codes and e-mailed links must never point at localhost.
    PUBLIC_BASE_URL = (env("PUBLIC_BASE_URL") or "").rstrip("/") or None
    FORCE_HTTPS = env_bool("FORCE_HTTPS", True)
    # Unconfigured gateways answer 503 rather than writing codes or mail to the log.
    MAIL_BACKEND = Config.MAIL_BACKEND or (
        "sendgrid" if Config.SENDGRID_API_KEY else "smtp" if Config.MAIL_SERVER else None)
    SMS_BACKEND = env("SMS_BACKEND") or ("twilio" if env("TWILIO_ACCOUNT_SID") else None)
    SQLALCHEMY_ENGINE_OPTIONS = database_engine_options(Config.SQLALCHEMY_DATABASE_URI)

    @classmethod
    def check(cls) -> None:
        missing = [
            name
            for name, value in (
                ("SESSION_SECRET", cls.SECRET_KEY),
                ("JWT_SECRET_KEY", cls.JWT_SECRET_KEY),
                ("DATABASE_URL", cls.SQLALCHEMY_DATABASE_URI),
                ("PUBLIC_BASE_URL", cls.PUBLIC_BASE_URL),
                ("CREDENTIAL_SIGNING_KEY", cls.CREDENTIAL_SIGNING_KEY),
                ("PDF_SIGNING_KEY", cls.PDF_SIGNING_KEY),
                ("PDF_SIGNING_CERT", cls.PDF_SIGNING_CERT),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                "Production configuration refuses to start: set "
                + ", ".join(missing)
                + " in the environment."
            )
        if cls.PASSWORD_HASH_SCHEME not in ("argon2id", "pbkdf2"):
            raise ConfigError("PASSWORD_HASH_SCHEME must be argon2id or pbkdf2, not "
                              f"{cls.PASSWORD_HASH_SCHEME!r}")


def _default_signing_material(cls, folder: Path) -> None:
    """Fill the signing settings left unset with keys generated into `folder`."""
    names = ("CREDENTIAL_SIGNING_KEY", "PDF_SIGNING_KEY", "PDF_SIGNING_CERT")
    if all(getattr(cls, name) for name in names):
        return
    generated = _dev_signing_material(folder)
    if not (cls.PDF_SIGNING_KEY or cls.PDF_SIGNING_CERT):
        cls.PDF_SIGNING_KEY, cls.PDF_SIGNING_CERT = (generated["PDF_SIGNING_KEY"],
                                                     generated["PDF_SIGNING_CERT"])
    if not cls.CREDENTIAL_SIGNING_KEY:
        cls.CREDENTIAL_SIGNING_KEY = generated["CREDENTIAL_SIGNING_KEY"]


CONFIGS = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}


def config_name_from_env() -> str:
    return (env("APP_ENV") or env("FLASK_ENV") or "development").lower()
