"""Small pieces shared by the route modules: output envelopes and per-route limits."""
from __future__ import annotations

from flask import current_app
from pydantic import BaseModel

from utils.extensions import limiter


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
