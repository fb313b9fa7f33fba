"""Small pieces shared by the route modules: output envelopes."""
from __future__ import annotations

from flask import url_for
from pydantic import BaseModel


class MessageOut(BaseModel):
    message: str


class Envelope(BaseModel):
    """A success body: keys name the resource ({"course": {...}}, {"courses": [...],
    "pagination": {...}}); documented loosely, shaped by each model's to_dict."""

    model_config = {"extra": "allow"}


def accepted(job, message: str, **extra):
    """202 for a request that started a background job: the job (queued, or already finished
    when jobs run inline) and where to follow it."""
    location = url_for("jobs.get_job", job_id=job.id)
    return {"message": message, "job": job.to_dict(), **extra}, 202, {"Location": location}
