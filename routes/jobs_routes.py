"""A background job's state, for the user who started it and for admins."""
from __future__ import annotations

from flask import Blueprint
from spectree import Response
from typing_extensions import TypedDict

from auth import current_user, login_required
from services import jobs
from utils.responses import JobOut
from utils.validation import errors, validate

bp = Blueprint("jobs", __name__)


class JobResponse(TypedDict):
    """A background job."""

    job: JobOut


@bp.get("/<string:job_id>")
@login_required
@validate(resp=Response(HTTP_200=JobResponse, **errors(401, 404)), tags=["jobs"],
          security={"bearer": []})
def get_job(job_id: str):
    """Status (queued, started, retrying, finished, failed), attempts, result and last error of
    a job you started (admins: any job)."""
    return {"job": jobs.visible(job_id, current_user()).to_dict()}
