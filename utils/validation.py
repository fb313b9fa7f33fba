"""One declaration per route validates its input, shapes its answer and documents both in
/api/v1/openapi.json.

Routes use `validate(json=Model, query=Model, resp=Response(HTTP_200=Body, **errors(...)))`;
the parsed models are on `request.context.json` / `request.context.query` (also `json_body()` /
`query_args()`). Errors come back in the API's shape: 422 with `details` mapping each field to
its message, and 415 when a JSON route is sent something that is not JSON.

Every model also gets the rules of `utils/validators.py` that no field has to ask for
(`input_problems`): no NUL in any text, no control character in one-line text, integers that
fit their column, finite numbers, dates in the supported years. The request pipeline
(utils/middleware.py) applies the same to what no model reads: path segments, raw query values,
form fields, and the nesting depth of a JSON body.

Answers: a view returns a plain dict (with a status and headers, as Flask allows); the body
model its declaration names for that status shapes it. Body models are TypedDicts
(`utils/responses.py`), serialized by pydantic straight from the dict: only the declared keys
go out, and no ORM graph is validated again. Under tests and the debugger the dict is also
checked against its model (no undeclared key or status, no missing key, every type right), so
the document cannot drift from what the code returns.
"""
from __future__ import annotations

from datetime import date
from decimal import Decimal
from functools import wraps
from json import dumps as json_dumps
from json import loads as json_loads
from types import SimpleNamespace
from typing import Annotated, Any, get_args, get_origin

from annotated_types import Le, Lt, MaxLen
from flask import current_app, request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema
from pydantic import ValidationError as PydanticValidationError
from pydantic.fields import FieldInfo
from spectree import Response, SecurityScheme, SpecTree
from spectree.model_adapter.pydantic_adapter import PydanticModelAdapter
from spectree.models import SecuritySchemeData, SecureType
from typing_extensions import is_typeddict

from utils.errors import UnsupportedMediaType, ValidationError
from utils.helpers import Written
from utils.pipeline import blocked_ips
from utils.pipeline.client_address import client_ip
from utils.responses import ErrorResponse
from utils.validators import (
    SINGLE_LINE_MAX,
    date_problem,
    detect_sql_injection,
    detect_xss,
    json_has_nul,
    number_problem,
    read_json_body,
    text_problem,
)


def _field_path(loc) -> str:
    return ".".join(str(part) for part in loc if part not in ("body", "query")) or "body"


def validation_details(errors: list[dict]) -> dict[str, str]:
    details: dict[str, str] = {}
    for err in errors:
        key = _field_path(err.get("loc", ()))
        details.setdefault(key, err.get("msg", "Invalid value"))
    return details


class TypedDictModels(PydanticModelAdapter):
    """spectree's pydantic adapter, also taking TypedDicts as models: answers are declared as
    TypedDicts so that they are serialized straight from the dicts the views return (spectree's
    own adapter takes BaseModels and dataclasses only, which would mean building an instance of
    every object of every answer first). Its JSON Schema is pydantic's, as for BaseModels."""

    def is_model_type(self, value) -> bool:
        return is_typeddict(value) or super().is_model_type(value)


# Component names are the class names: generated clients turn them into type names, so they
# are readable and stay put when a model moves. Two models may not share a name.
_NAMED: dict[str, type] = {}


def component_name(model) -> str:
    name = model.__name__
    known = _NAMED.setdefault(name, model)
    if known is not model:
        raise RuntimeError(f"two models are named {name}: {known.__module__}.{name} and "
                           f"{model.__module__}.{name}; component names must be unique")
    return name


def nested_component_name(_parent: str, child: str) -> str:
    """A model nested in another is published under its own name, once."""
    return child


spec = SpecTree(
    "flask",
    model_adapter=TypedDictModels(),
    naming_strategy=component_name,
    nested_naming_strategy=nested_component_name,
    title="AI First Academy LMS API",
    version="1.0.0",
    path="api/v1/docs",
    validation_error_status=422,
    validation_error_model=ErrorResponse,
    annotations=False,
    security_schemes=[
        SecurityScheme(
            name="bearer",
            data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer", bearer_format="JWT"),
        )
    ],
)


def _query_items(args=None) -> dict:
    """A query's values as its model reads them (the request's, or `args`, a MultiDict): a
    repeated key as a list."""
    args = request.args if args is None else args
    return {key: values if len(values) > 1 else values[0] for key, values in args.lists()}


# Failures of structured values (a number, an e-mail, a choice, a pattern, a date): an
# injection pattern in one is a high-confidence attack, as prose never belongs there.
_STRUCTURED_FAILURES = frozenset({
    "int_parsing", "int_from_float", "float_parsing", "decimal_parsing", "bool_parsing",
    "literal_error", "enum", "string_pattern_mismatch", "uuid_parsing", "date_parsing",
    "date_from_datetime_parsing", "datetime_parsing", "datetime_from_date_parsing",
    "time_parsing", "url_parsing", "url_scheme", "invalid_email", "invalid_phone", "invalid_url",
})


def _is_attack(error: dict) -> bool:
    value = error.get("input")
    return (error.get("type") in _STRUCTURED_FAILURES and isinstance(value, str)
            and (detect_sql_injection(value) or detect_xss(value)))


def _limits(metadata) -> tuple[bool, bool]:
    """(one line, bounded) for a value with this metadata: a string capped at SINGLE_LINE_MAX
    characters or fewer holds one line; a number with its own maximum is bounded by it."""
    caps = [m.max_length for m in metadata if isinstance(m, MaxLen)]
    return (bool(caps) and min(caps) <= SINGLE_LINE_MAX,
            any(isinstance(m, (Le, Lt)) for m in metadata))


def _item_metadata(annotation) -> list:
    """The constraints on the items of a list field (`list[Annotated[str, Field(...)]]`)."""
    for arg in get_args(annotation):
        if get_origin(arg) in (list, tuple, set, frozenset):
            return _item_metadata(arg)
        if get_origin(arg) is Annotated:
            found = []
            for extra in get_args(arg)[1:]:
                found.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
            return found
    return []


def _value_problems(value, loc: tuple, metadata, found: list[dict], annotation=None) -> None:
    problem = None
    single_line, bounded = _limits(metadata)
    if isinstance(value, BaseModel):
        found.extend(input_problems(value, loc))
    elif isinstance(value, str):
        problem = text_problem(value, single_line=single_line)
    elif isinstance(value, (int, float, Decimal)):
        problem = number_problem(value, bounded=bounded)
    elif isinstance(value, date):  # datetime too
        problem = date_problem(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and text_problem(key, single_line=True):
                problem = "Keys must not contain control characters"
            _value_problems(item, (*loc, key), (), found)
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = _item_metadata(annotation)
        for index, item in enumerate(value):
            _value_problems(item, (*loc, index), items, found)
    if problem:
        found.append({"loc": loc, "msg": problem, "type": "invalid_input"})


def input_problems(model: BaseModel, loc: tuple = ()) -> list[dict]:
    """What a parsed model holds that no input may (see the module's docstring), as
    pydantic-style error entries (`loc`, `msg`, `type`); [] when nothing."""
    found: list[dict] = []
    for name, field in type(model).model_fields.items():
        _value_problems(getattr(model, name, None), (*loc, name), field.metadata, found,
                        field.annotation)
    return found


def _parse(model: type[BaseModel], data, errors: list[dict]):
    """`model` validated from `data`, with the rules every input keeps to; problems are added
    to `errors` (and None returned)."""
    try:
        parsed = model.model_validate(data)
    except PydanticValidationError as exc:
        errors.extend(exc.errors())
        return None
    problems = input_problems(parsed)
    if problems:
        errors.extend(problems)
        return None
    return parsed


def parsed_query(model: type[BaseModel], args) -> Any:
    """`model` from a query's `args` (a MultiDict) as `validate(query=model)` parses it, outside
    a request (the fast paths); None where that would answer 422 (Flask then does)."""
    return _parse(model, _query_items(args), [])


def parsed_body(model: type[BaseModel], raw: bytes) -> Any:
    """`model` from a JSON body's bytes as the middleware (utils/middleware.py) and
    `validate(json=model)` read it, outside a request (the signed-in fast path; in an app
    context): UTF-8, not too deep, valid JSON without NUL, the app's JSON provider's document
    (`request.get_json`), the model and the rules every input keeps to; None where either
    would refuse it (Flask then does)."""
    try:
        _document, text = read_json_body(raw)
        if json_has_nul(text):
            return None
        document = current_app.json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return _parse(model, document or {}, [])


def _raise_invalid(errors: list[dict]) -> None:
    """422 for `errors`; an injection pattern is recorded as a security event: in a structured
    field it counts towards blocking the address, in free text (`unsafe_input` from SafeText)
    it is counted and logged only (utils/pipeline/blocked_ips.py)."""
    attacks = [_field_path(e.get("loc", ())) for e in errors if _is_attack(e)]
    prose = [_field_path(e.get("loc", ())) for e in errors if e.get("type") == "unsafe_input"]
    if attacks:
        blocked_ips.record_unsafe_input(client_ip(), attacks + prose)
    elif prose:
        blocked_ips.record_unsafe_text(client_ip(), prose)
    raise ValidationError("Invalid input", details=validation_details(errors))


def validate(*, json: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
             resp: Response | None = None, tags=(), security=None, media=None, **kwargs):
    """Validate a route's query string and JSON body against its models, shape its answer
    with the body model `resp` declares for the status, and describe the route in the OpenAPI
    document.

    Validation is done here: spectree's own wrapper also re-reads, re-parses and
    re-validates every response body, which the benchmark showed to dominate the cost of cheap
    requests. `media` names answers in other formats than JSON, per status:
    `{200: {"application/pdf": "The certificate"}}` (routes/docs.py documents them as files,
    text/html and text/csv as text). spectree keeps the declarations for the document: its own wrapper is not
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
                context.query = _parse(query, _query_items(), errors)
            if json is not None and request.method in ("POST", "PUT", "PATCH"):
                if request.content_length and not request.is_json:
                    raise UnsupportedMediaType(
                        "Send this request as JSON with 'Content-Type: application/json'")
                context.json = _parse(json, request.get_json(silent=True) or {}, errors)
            if errors:
                _raise_invalid(errors)
            return shaped(fn(*args, **kw), resp, media)

        wrapper.api_media = media
        wrapper.api_query, wrapper.api_resp = query, resp  # for the fast paths
        wrapper.api_json = json
        return wrapper

    return decorator


# --- answers ----------------------------------------------------------------------------------

class UndeclaredAnswer(RuntimeError):
    """A view answered with a status or a body its declaration does not describe (raised
    under tests and the debugger only)."""


_ADAPTERS: dict[type, TypeAdapter] = {}


def _adapter(model: type) -> TypeAdapter:
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
    return adapter


def _split(result):
    """(body, status, headers) of a view's return value, read as Flask reads it."""
    if not isinstance(result, tuple):
        return result, 200, None
    if len(result) == 3:
        return result
    body, second = result
    if isinstance(second, int):
        return body, second, None
    return body, 200, second


def shaped(result, resp: Response | None, media: dict | None = None):
    """The view's answer as JSON shaped by the body model declared for its status. Anything
    but a dict (a file, a stream, a cached copy) goes out as the view made it; a JSON document
    the view serialized itself (a signed credential, in a media type `media` names with a
    body model) is checked against that model under tests, and goes out as made."""
    body, status, headers = _split(result)
    if isinstance(body, (str, bytes)) and media:
        _check_document(body, status, headers, media)
    if resp is None or not isinstance(body, dict):
        return result
    model = resp.find_model(status)
    checking = current_app.testing or current_app.debug
    if model is None:
        if checking:
            raise UndeclaredAnswer(f"{request.endpoint} answered {status}, which its "
                                   "declaration (resp=...) does not list with a body model")
        return result
    data = _shaped_json(body, model, checking, f"{request.endpoint} answered {status}")
    return current_app.response_class(data, status=status, headers=headers,
                                      mimetype="application/json")


def _shaped_json(body: dict, model: type, checking: bool, answered: str) -> bytes:
    adapter = _adapter(model)
    typed_dict = is_typeddict(model)
    written = [key for key, value in body.items() if isinstance(value, Written)]
    joined = _joined(adapter, body, written) if written and typed_dict else None
    if joined is not None and not checking:
        return joined
    if written:
        body = {**body, **{key: body[key].made() for key in written}}
    if checking:
        try:
            adapter.validate_python(body, strict=typed_dict, extra="forbid")
        except PydanticValidationError as exc:
            raise UndeclaredAnswer(f"{answered} with a body that "
                                   f"{model.__name__} does not describe:\n{exc}") from None
    data = adapter.dump_json(body if typed_dict else adapter.validate_python(body))
    if joined is not None and joined != data:
        raise UndeclaredAnswer(f"{answered} with items written ahead that {model.__name__} "
                               f"writes otherwise:\n{joined!r}\nagainst\n{data!r}")
    return data


def _joined(adapter: TypeAdapter, body: dict, written: list[str]) -> bytes | None:
    """`body` as `adapter` writes it, each list of already written items (utils.helpers.Written)
    under `written` joined in place of writing its items again: the body is written with
    those lists empty, and each `"key":[]` (found exactly once, else None: the caller writes
    the items) receives its fragments. Such a marker cannot come from inside a string, where
    every quote is escaped."""
    data = adapter.dump_json({**body, **{key: [] for key in written}})
    places = []
    for key in written:
        empty = json_dumps(key).encode() + b":[]"
        if data.count(empty) != 1:
            return None
        places.append((data.index(empty), len(empty), key))
    for start, length, key in sorted(places, reverse=True):
        data = data[:start] + json_dumps(key).encode() + b":" + body[key].json() + \
            data[start + length:]
    return data


def answer_body(view, body) -> bytes:
    """The JSON body of `view`'s 200 answer with `body`, shaped as `shaped` shapes it, outside a
    request (the fast paths, in an app context). TypeError for an answer `shaped`
    would not shape (not a dict, no declared model): Flask then answers."""
    resp = getattr(view, "api_resp", None)
    model = resp.find_model(200) if resp is not None else None
    if model is None or not isinstance(body, dict):
        raise TypeError(f"{view.__name__}: no JSON body model to shape its answer")
    return _shaped_json(body, model, current_app.testing or current_app.debug,
                        f"{view.__name__} answered 200")


def _check_document(body: str | bytes, status: int, headers, media: dict) -> None:
    """Under tests and the debugger: a JSON document a view serialized itself matches the body
    model its declaration names for the status and media type (`media={200:
    {"application/ld+json": Model}}`)."""
    if not (current_app.testing or current_app.debug):
        return
    content_type = (headers or {}).get("Content-Type", "") if isinstance(headers, dict) else ""
    model = (media.get(status) or {}).get(content_type.split(";")[0].strip())
    if not is_typeddict(model):
        return
    try:
        _adapter(model).validate_python(json_loads(body), strict=True, extra="forbid")
    except (ValueError, PydanticValidationError) as exc:
        raise UndeclaredAnswer(f"{request.endpoint} answered {status} with a {content_type} "
                               f"document that {model.__name__} does not describe:\n{exc}"
                               ) from None


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


def errors(*statuses: int) -> dict[str, type]:
    """Response declarations for the error statuses a route can answer with."""
    return {f"HTTP_{status}": ErrorResponse for status in statuses}


# A file field of a multipart form, as the document describes it (the view reads the file
# from `request.files`).
UploadFile = Annotated[Any, WithJsonSchema({"type": "string", "format": "binary"})]


def filters(model: type[BaseModel]):
    """Filters for a list that the API documentation also reads with POST: the query string,
    overlaid with a JSON object body when there is one. Declared as `query=model` on the route
    (so it is documented); validated here once more with the merged input."""
    body = request.get_json(silent=True) if request.method == "POST" and request.is_json else None
    if not isinstance(body, dict) or not body:
        return query_args()
    merged = {**request.args.to_dict(), **body}
    errors: list[dict] = []
    parsed = _parse(model, merged, errors)
    if errors:
        _raise_invalid(errors)
    return parsed


class IdList(StrictModel):
    """A body that names items in order (reordering)."""

    ids: list[int] = Field(min_length=1, max_length=500)


def document(**kwargs):
    """Describe a route in the API document and shape its dict answers, without validating
    its input: for file downloads, streams and forms, whose views read the request themselves
    (`parse_query`, `request.files`). spectree's wrapper is only found, through `__wrapped__`,
    for the declaration."""

    media = kwargs.pop("media", None)

    def decorator(fn):
        documented = spec.validate(**kwargs)(fn)
        resp = kwargs.get("resp")

        @wraps(documented)
        def view(*args, **kw):
            return shaped(fn(*args, **kw), resp, media)

        view.api_media = media
        return view

    return decorator


def parse_query(model: type[BaseModel]):
    """Validate the query string against `model` in a view that is documented with
    `document()` rather than wrapped (streamed answers)."""
    errors: list[dict] = []
    parsed = _parse(model, _query_items(), errors)
    if errors:
        _raise_invalid(errors)
    return parsed
