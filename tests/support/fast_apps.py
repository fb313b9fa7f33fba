"""An app of its own for the fast paths' tests (tests/test_catalog_fast_path.py,
tests/test_signed_in_fast_path.py): the session app's database, Redis for the shared state and
the rate limits, and the given settings."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask

from app import create_app
from config import limiter_storage_uri
from models import db
from tests.conftest import redis_url, require_service
from utils.extensions import limiter
from utils.pipeline import redis_client


@contextmanager
def redis_app(app: Flask, **overrides) -> Iterator[Flask]:
    url = require_service("Redis (TEST_REDIS_URL)", redis_url())
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    fast = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": uri, "REDIS_URL": url,
        "RATELIMIT_STORAGE_URI": limiter_storage_uri(url),
        "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"], **overrides})
    with fast.app_context():
        if uri == "sqlite://":
            db.create_all()
        redis_client.get().flushdb()
    try:
        yield fast
    finally:
        with fast.app_context():
            redis_client.get().flushdb()
            if uri == "sqlite://":
                db.drop_all()
            db.session.remove()
        # The shared limiter, as the session app had it: Flask-Limiter keeps default limits
        # across init_app, so they are cleared by hand.
        limiter.limit_manager.set_default_limits([])
        create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": uri})
        # ...and out of the in-memory fallback a test that stopped Redis left it in.
        limiter._storage_dead = False
