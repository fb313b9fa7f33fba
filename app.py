"""Application factory: extensions, JWT loaders, error handlers, blueprints, CLI commands.

`gunicorn app:app` and `flask --app app` both find `app` here. It is built on first access
rather than at import, so importing `create_app` (tests, tools) builds no development app.
"""
from __future__ import annotations

import sys
from functools import wraps

from flask import Flask
from flask_talisman import Talisman
from sqlalchemy.orm import configure_mappers

from auth import jwt
from config import CONFIGS, ConfigError, config_name_from_env, ping_when_idle
from models import db
# In this order: spectree lists the OpenAPI document's component schemas in the order the
# routes' decorators declare them, and the published document keeps its order.
from routes import (  # isort: skip
    admin_routes,
    auth_routes,
    course_routes,
    certificate_routes,
    contact_routes,
    credential_routes,
    did_routes,
    docs,
    enrollments_routes,
    lessons_resources_routes,
    file_routes,
    jobs_routes,
    health,
    lessons_routes,
    live_session_routes,
    master_routes,
    media,
    modules_routes,
    notification_routes,
    payment_routes,
    prerequisites,
    public_routes,
    subcategory_routes,
    user_routes,
    verify_page,
)
from routes.cli import register_commands
from services import certificate_service, job_kinds, jobs
from services.credentials import keys as credential_keys
from services.email_service import register_outbox
from utils import error_reporting, json_provider, metrics, read_only
from utils.extensions import cors, limiter, mail, migrate
from utils.middleware import init_middleware, log_request
from utils.pipeline.catalog_fast_path import CatalogFastPath
from utils.pipeline.client_address import TrustedProxies, parse_networks
from utils.pipeline.signed_in_fast_path import SignedInFastPath
from utils.pipeline.hooks import init_pipeline
from utils.validation import answer_body, parsed_body, parsed_query, spec

API_CSP = {"default-src": "'none'", "frame-ancestors": "'none'"}
VERIFY_CSP = {"default-src": "'none'", "style-src": "'unsafe-inline'", "form-action": "'self'",
              "frame-ancestors": "'none'", "base-uri": "'none'"}
# The docs page loads Swagger UI from the app itself (routes/docs.py): no other host, and no
# inline script (Swagger UI sets styles inline).
DOCS_CSP = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "font-src": "'self'",
    "connect-src": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
    "form-action": "'none'",
}


def create_app(config_name: str | None = None, overrides: dict | None = None) -> Flask:
    """Build the app for `config_name` (default: APP_ENV / FLASK_ENV, else development);
    `overrides` replaces config values after the class is loaded (tests use it)."""
    config_name = config_name or config_name_from_env()
    config_class = CONFIGS[config_name]
    config_class.check()

    # No automatic /static route: uploads include private files (certificates, lesson
    # resources); the public ones are served by routes/media.py.
    app = Flask(__name__, instance_relative_config=True, static_folder=None)
    app.config.from_object(config_class)
    app.config.update(overrides or {})
    app.config["CONFIG_NAME"] = config_name
    json_provider.install(app)  # orjson; keys in insertion order, as before
    error_reporting.init_app(app)

    # Forwarded headers are believed from TRUSTED_PROXIES only and removed from every other
    # request (gunicorn believes none: gunicorn.conf.py).
    try:
        proxies = parse_networks(app.config["TRUSTED_PROXIES"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # Inside TrustedProxies (the client's address is settled first): a guest's current cached
    # catalog page, and a learner's signed-in read, are answered here, their limits and checks
    # in one Redis round trip.
    app.wsgi_app = TrustedProxies(
        CatalogFastPath(
            SignedInFastPath(app.wsgi_app, app, app.config["API_PREFIX"] + "/",
                             shape=answer_body, parse_query=parsed_query,
                             parse_body=parsed_body, on_answer=_fast_answer),
            app, app.config["API_PREFIX"] + "/public/", on_answer=_fast_answer,
            shape=answer_body, parse_query=parsed_query), proxies)

    db.init_app(app)
    with app.app_context():
        ping_when_idle(db.engine)  # PostgreSQL: a pooled connection is pinged after it sat idle
        # Views marked @read_only read without BEGIN and ROLLBACK, in prepared statements.
        read_only.attach(db.engine, app.config["DATABASE_PREPARED_STATEMENTS"])
    migrate.init_app(app, db, compare_type=True, render_as_batch=True)
    jwt.init_app(app)
    limiter.init_app(app)
    mail.init_app(app)
    cors.init_app(
        app,
        resources={r"/api/*": {"origins": [app.config["FRONTEND_URL_STUDENTS"],
                                            app.config["FRONTEND_URL_ADMIN"]]}},
        expose_headers=["X-Request-ID", "Retry-After", "Content-Disposition"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        max_age=600,
        always_send=False,
    )
    # Talisman keeps its options on the instance, so each app gets its own.
    app.extensions["talisman"] = Talisman(
        app,
        force_https=app.config["FORCE_HTTPS"],
        strict_transport_security=True,
        session_cookie_secure=app.config["FORCE_HTTPS"],
        content_security_policy=API_CSP,
        frame_options="DENY",
        referrer_policy="no-referrer",
    )
    init_middleware(app)
    metrics.init_app(app)
    register_outbox()
    init_pipeline(app)
    jobs.register()
    job_kinds.register()
    certificate_service.register()
    with app.app_context():
        # A signing key setting that cannot be used stops the start here, saying which.
        credential_keys.check_configured()


    api = app.config["API_PREFIX"]
    for module, prefix in (
        (health, "/health"),
        (docs, ""),
        (auth_routes, "/auth"),
        (user_routes, "/users"),
        (master_routes, "/master-categories"),
        (subcategory_routes, "/subcategories"),
        (course_routes, "/courses"),
        (modules_routes, "/modules"),
        (lessons_routes, "/lessons"),
        (lessons_resources_routes, "/lesson-resources"),
        (prerequisites, "/prerequisites"),
        (enrollments_routes, "/enrollments"),
        (certificate_routes, "/certificates"),
        (credential_routes, "/credentials"),
        (payment_routes, "/payments"),
        (live_session_routes, "/live-sessions"),
        (notification_routes, "/notifications"),
        (contact_routes, "/contact"),
        (file_routes, "/files"),
        (public_routes, "/public"),
        (admin_routes, "/admin"),
        (jobs_routes, "/jobs"),
    ):
        app.register_blueprint(module.bp, url_prefix=api + prefix)
    app.register_blueprint(media.bp, url_prefix="/static/uploads")
    app.register_blueprint(verify_page.bp, url_prefix="/verify")
    app.register_blueprint(did_routes.bp)

    spec.register(app)
    docs.serve_spectree_pages(app)
    _per_view_security(app)

    register_commands(app)
    # The models' mappers, set up now rather than by the first ORM statement a process runs:
    # under gunicorn (preload_app) once in the master, before the fork, instead of in every
    # worker. A worker whose guest reads all came from the catalog copy ran its first ORM
    # statement only when the shared state's trust lapsed (every SHARED_SYNC_SECONDS) and its
    # requests went to Flask, which reads blocks from the database meanwhile: all four workers
    # then set up the mappers at the same moment, 100-240 ms of CPU each on two cores, and
    # the cached catalog's p99 went to 3-14x its p50.
    configure_mappers()
    return app


def _fast_answer(environ, status: int, rule: str, started: float, request_id: str,
                 user_id: int | None = None) -> None:
    """An answer of a fast path (the catalog's, the signed-in reads' and writes') counted and
    logged as Flask's are."""
    method = environ.get("REQUEST_METHOD", "GET")
    metrics.count_request(method, rule, status, started)
    log_request(method, environ.get("PATH_INFO", ""), status, started, environ.get("REMOTE_ADDR"),
                user_id, request_id=request_id)


def _per_view_security(app: Flask) -> None:
    """Exceptions to the app-wide headers: the docs pages load Swagger UI's scripts and styles
    from the app (the JSON API allows nothing); health probes come from load balancers over plain
    HTTP inside the network, so they are not redirected to HTTPS."""
    for endpoint, view in list(app.view_functions.items()):
        if endpoint.startswith("openapi_") or endpoint in ("docs.docs_page", "docs.docs_asset"):
            options = {"content_security_policy": DOCS_CSP}
        elif endpoint.startswith("verify_page."):
            options = {"content_security_policy": VERIFY_CSP}
        elif endpoint.startswith("health."):
            options = {"force_https": False}
        else:
            continue
        app.view_functions[endpoint] = _with_options(view, options)


def _with_options(view, options: dict):
    """This app's own copy of a view with its Talisman options: Talisman fills a view's options
    in place on first use (FORCE_HTTPS among them), so a view function that several apps share
    (tests build many) must not carry them itself."""

    @wraps(view)
    def per_app(*args, **kwargs):
        return view(*args, **kwargs)

    per_app.talisman_view_options = dict(options)
    return per_app


_app: Flask | None = None


def __getattr__(name: str):
    # `app = create_app()`, built when gunicorn or the flask CLI first asks for it.
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        try:
            _app = create_app()
        except ConfigError as exc:
            # One clear line for the operator, not a traceback (logging is not set up yet).
            print(str(exc), file=sys.stderr)
            raise SystemExit(1) from None
    return _app
