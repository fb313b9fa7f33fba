"""The API description, generated from the routes' own validation declarations."""
from __future__ import annotations

from flask import Blueprint, current_app

from utils.validation import spec

bp = Blueprint("docs", __name__)


@bp.get("/openapi.json")
def openapi():
    return current_app.json.response(spec.spec)


@bp.get("/docs")
def docs_page():
    return spec.config.page_templates["swagger"].format(
        spec_url="/api/v1/openapi.json", spec_path=spec.config.path,
        **spec.config.swagger_oauth2_config(),
    )
