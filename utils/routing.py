"""What the blueprints share: the 202 of a request that started a job, the fields a partial
update sent, the multipart form fields of uploads, and aliases (a path of one blueprint served
by another blueprint's view). Blueprint modules never import each other; they meet here."""
from __future__ import annotations

from flask import Blueprint, request, url_for
from pydantic import BaseModel

from utils.errors import ValidationError


def accepted(job, message: str, **extra):
    """202 for a request that started a background job: the job (queued, or already finished
    when jobs run inline) and where to follow it."""
    location = url_for("jobs.get_job", job_id=job.id)
    return {"message": message, "job": job.to_dict(), **extra}, 202, {"Location": location}


def sent_changes(model: BaseModel, clearable=()) -> dict:
    """The fields a partial update sent: a null clears a field named in `clearable` and is
    ignored for the others (required columns cannot be set to null)."""
    return {key: value for key, value in model.model_dump(exclude_unset=True).items()
            if value is not None or key in clearable}


def alias(bp: Blueprint, rule: str, view: str, **options) -> None:
    """Serve `rule` on `bp` with the view registered as `view` (an endpoint of another
    blueprint, which the app registers first): the same function, so the same checks, limits
    and OpenAPI entry. The view is looked up when `bp` is registered, so neither module
    imports the other."""
    bp.record(lambda state: state.add_url_rule(
        rule, view_func=state.app.view_functions[view], **options))


def form_id(name: str) -> int:
    """An integer id from a multipart form (or the query string)."""
    raw = request.form.get(name) or request.args.get(name) or ""
    if not raw.strip().isdigit():
        raise ValidationError("Invalid input", details={name: "is required (an integer id)"})
    return int(raw)


def form_text(name: str, limit: int) -> str | None:
    """An optional text field of a multipart form, stripped, at most `limit` characters."""
    value = request.form.get(name)
    if value is None:
        return None
    value = value.strip()
    if len(value) > limit:
        raise ValidationError("Invalid input", details={name: f"at most {limit} characters"})
    return value or None
