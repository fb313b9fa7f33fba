"""One declaration per route validates its input and documents it in /api/v1/openapi.json.

Routes use `validate(json=Model, query=Model, resp=Response(...))`; the parsed models are on
`request.context.json` / `request.context.query` (also `json_body()` / `query_args()`). Errors
come back in the API's shape: 422 with `details` mapping each field to its message, and 415
when a JSON route is sent something that is not JSON.
"""
from __future__ import annotations

from functools import wraps
from types import SimpleNamespace
from typing import Any

from flask import request
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from spectree import Response, SecurityScheme, SpecTree
from spectree.models import SecuritySchemeData, SecureType
from spectree.utils import get_model_key, hash_module_path

from utils.errors import UnsupportedMediaType, ValidationError
from utils.pipeline import blocked_ips
from utils.pipeline.client_address import client_ip


class ErrorOut(BaseModel):
    error: str
    code: str
    details: dict[str, Any] | None = None


def _field_path(loc) -> str:
    return ".".join(str(part) for part in loc if part not in ("body", "query")) or "body"


def validation_details(errors: list[dict]) -> dict[str, str]:
    details: dict[str, str] = {}
    for err in errors:
        key = _field_path(err.get("loc", ()))
        details.setdefault(key, err.get("msg", "Invalid value"))
    return details


# The document names a model by its class and a hash of its module, and clients are generated
# from those names: a model that moved keeps the name of the module it was published from.
PUBLISHED_FROM = {
    ("utils.routing", "Envelope"): "routes.common",
    ("utils.routing", "MessageOut"): "routes.common",
    ("utils.schemas", "CourseListQuery"): "routes.course_routes",
    ("utils.schemas", "TeachingQuery"): "routes.course_routes",
}


def component_name(model) -> str:
    home = PUBLISHED_FROM.get((getattr(model, "__module__", None),
                               getattr(model, "__name__", None)))
    if home is None:
        return get_model_key(model)
    return f"{model.__name__}.{hash_module_path(module_path=home)}"


spec = SpecTree(
    "flask",
    naming_strategy=component_name,
    title="AI First Academy LMS API",
    version="1.0.0",
    path="api/v1/docs",
    validation_error_status=422,
    validation_error_model=ErrorOut,
    annotations=False,
    security_schemes=[
        SecurityScheme(
            name="bearer",
            data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer", bearer_format="JWT"),
        )
    ],
)


def _query_items() -> dict:
    return {key: values if len(values) > 1 else values[0]
            for key, values in request.args.lists()}


def _raise_invalid(errors: list[dict]) -> None:
    tripped = [_field_path(e.get("loc", ())) for e in errors if e.get("type") == "unsafe_input"]
    if tripped:
        blocked_ips.record_unsafe_input(client_ip(), tripped)
    raise ValidationError("Invalid input", details=validation_details(errors))


def validate(*, json: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
             resp: Response | None = None, tags=(), security=None, **kwargs):
    """Validate a route's query string and JSON body against its models, and describe the
    route (with `resp`) in the OpenAPI document.

    Validation is done here, on the input only: spectree's own wrapper also re-reads,
    re-parses and re-validates every response body, which the benchmark showed to dominate
    the cost of cheap requests (the schema-fuzz test checks responses against the document
    in CI instead). spectree keeps the declarations for the document: its own wrapper is not
    called, but ours wraps it (`__wrapped__`), which is how spectree finds a view's declaration
    under other decorators."""

    def decorator(fn):
        documented = spec.validate(json=json, query=query, resp=resp, tags=tags,
                                   security=security, **kwargs)(fn)

        @wraps(documented)
        def wrapper(*args, **kw):
            context = SimpleNamespace(query=None, json=None)
            request.context = context
            errors: list[dict] = []
            if query is not None:
                try:
                    context.query = query.model_validate(_query_items())
                except PydanticValidationError as exc:
                    errors.extend(exc.errors())
            if json is not None and request.method in ("POST", "PUT", "PATCH"):
                if request.content_length and not request.is_json:
                    raise UnsupportedMediaType(
                        "Send this request as JSON with 'Content-Type: application/json'")
                try:
                    context.json = json.model_validate(request.get_json(silent=True) or {})
                except PydanticValidationError as exc:
                    errors.extend(exc.errors())
            if errors:
                _raise_invalid(errors)
            return fn(*args, **kw)

        return wrapper

    return decorator


def json_body() -> Any:
    return request.context.json


def query_args() -> Any:
    return request.context.query


class StrictModel(BaseModel):
    """Input models: unknown fields are ignored (the contract), surrounding whitespace of
    strings is stripped."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class PageQuery(StrictModel):
    page: int = Field(1, ge=1, le=100_000)
    per_page: int = Field(20, ge=1)

    def model_post_init(self, __context) -> None:
        # The contract caps per_page at 100 rather than refusing larger values.
        if self.per_page > 100:
            self.per_page = 100


def errors(*statuses: int) -> dict[str, type[BaseModel]]:
    """Response declarations for the error statuses a route can answer with."""
    return {f"HTTP_{status}": ErrorOut for status in statuses}


def filters(model: type[BaseModel]):
    """Filters for a list that the API documentation also reads with POST: the query string,
    overlaid with a JSON object body when there is one. Declared as `query=model` on the route
    (so it is documented); validated here once more with the merged input."""
    body = request.get_json(silent=True) if request.method == "POST" and request.is_json else None
    if not isinstance(body, dict) or not body:
        return query_args()
    merged = {**request.args.to_dict(), **body}
    try:
        return model.model_validate(merged)
    except PydanticValidationError as exc:
        _raise_invalid(exc.errors())


class IdList(StrictModel):
    """A body that names items in order (reordering)."""

    ids: list[int] = Field(min_length=1, max_length=500)


def document(**kwargs):
    """Describe a route in the API document without wrapping it. For file downloads:
    spectree's wrapper re-reads every response body (`get_data`), which breaks streamed files
    and would hold a whole video in memory. The view is called as it is; spectree's wrapper is
    only found, through `__wrapped__`, for the declaration."""

    def decorator(fn):
        documented = spec.validate(**kwargs)(fn)

        @wraps(documented)
        def view(*args, **kw):
            return fn(*args, **kw)

        return view

    return decorator


def parse_query(model: type[BaseModel]):
    """Validate the query string against `model` in a view that is documented with
    `document()` rather than wrapped (streamed answers)."""
    try:
        return model.model_validate(_query_items())
    except PydanticValidationError as exc:
        _raise_invalid(exc.errors())
