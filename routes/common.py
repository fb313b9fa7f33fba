"""Small pieces shared by the route modules: output envelopes, per-route limits and
`Idempotency-Key` handling."""
from __future__ import annotations

import logging
from functools import wraps

from flask import after_this_request, current_app, request
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from app import limiter
from auth import current_user
from models import db
from services import idempotency_keys

log = logging.getLogger("lms.idempotency")


def config_limit(name: str):
    """A per-route limit read from config when the request arrives."""
    return limiter.limit(lambda: current_app.config[name])


class MessageOut(BaseModel):
    message: str


class Envelope(BaseModel):
    """A success body: keys name the resource ({"course": {...}}, {"courses": [...],
    "pagination": {...}}); documented loosely, shaped by each model's to_dict."""

    model_config = {"extra": "allow"}


def accepted(job, message: str, **extra):
    """202 for a request that started a background job: the job (queued, or already finished
    when jobs run inline) and where to follow it."""
    from flask import url_for

    location = url_for("jobs.get_job", job_id=job.id)
    return {"message": message, "job": job.to_dict(), **extra}, 202, {"Location": location}


class IdempotencyHeaders(BaseModel):
    """The optional header of the POSTs that create money or access."""

    model_config = {"populate_by_name": True}

    idempotency_key: str | None = Field(
        None, alias="Idempotency-Key", min_length=1, max_length=idempotency_keys.MAX_KEY_LENGTH,
        description="A key of the client's choosing (a UUID): the same key from the same user "
                    "within IDEMPOTENCY_KEY_HOURS gets the first answer again (marked "
                    "`Idempotent-Replayed: true`); with another body it is 422, while the "
                    "first request still runs 409.")


def idempotent(view):
    """Honour `Idempotency-Key` on a signed-in route (see services/idempotency_keys.py). Put it
    under `validate(...)`: a request refused by validation claims no key."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        header = request.headers.get(idempotency_keys.HEADER)
        if header is None:
            return view(*args, **kwargs)
        key = idempotency_keys.parse_key(header)
        claim = idempotency_keys.claim(
            current_user().id, key,
            idempotency_keys.fingerprint(request.endpoint, request.view_args or {},
                                         request.get_json(silent=True)),
            request.endpoint)
        if claim.replay is not None:
            db.session.rollback()
            return claim.replay.body, claim.replay.status, {
                **claim.replay.headers, idempotency_keys.REPLAYED_HEADER: "true"}
        db.session.commit()  # from here on, a concurrent request with this key finds it

        @after_this_request
        def keep_answer(response):
            # The view committed what it did; whatever else the session holds belongs to a
            # request that failed, and goes.
            db.session.rollback()
            try:
                idempotency_keys.finish(claim.id, response.status_code,
                                        response.get_json(silent=True), dict(response.headers))
                db.session.commit()
            except SQLAlchemyError:  # the key stays claimed until its lease runs out
                db.session.rollback()
                log.exception("could not keep the answer for an idempotency key")
            return response

        return view(*args, **kwargs)

    return wrapper
