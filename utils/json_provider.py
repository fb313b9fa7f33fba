"""Flask's JSON answers written by orjson.

Flask's default provider spends a large share of a list answer's CPU in the standard library's
encoder; orjson writes the same document several times faster, straight to bytes. What Flask
adds is kept: dates as HTTP dates, Decimal and UUID as strings, dataclasses as objects,
`__html__` objects as their markup, keys in insertion order, compact output (indented in debug)
and the trailing newline. Differences, all still the same JSON value: non-ASCII text is
written as UTF-8 rather than \\u escapes, and a value orjson refuses (an integer past 64 bits)
falls back to the standard encoder. Request bodies are still parsed by the standard library,
whose treatment of huge numbers the validation relies on.
"""
from __future__ import annotations

import dataclasses
import decimal
import uuid
from datetime import date
from typing import Any

import orjson
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from werkzeug.http import http_date

from utils.helpers import Written

_OPTIONS = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
            | orjson.OPT_NON_STR_KEYS)


def _default(value: Any) -> Any:
    """What Flask's provider does for the types the encoder does not know; a list whose items
    are already written (utils.helpers.Written) as those items' JSON."""
    if isinstance(value, Written):
        return orjson.Fragment(value.json())
    if isinstance(value, date):
        return http_date(value)
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "__html__"):
        return str(value.__html__())
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class OrjsonProvider(DefaultJSONProvider):
    sort_keys = False

    @staticmethod
    def default(o: Any) -> Any:
        """The standard encoder's fallback (below): Flask's, and a list of items already
        written (utils.helpers.Written) as those items."""
        if isinstance(o, Written):
            return o.made()
        return DefaultJSONProvider.default(o)

    def _bytes(self, obj: Any, indent: bool) -> bytes:
        try:
            return orjson.dumps(obj, default=_default,
                                option=_OPTIONS | (orjson.OPT_INDENT_2 if indent else 0))
        except orjson.JSONEncodeError:
            # An integer past 64 bits, a type nobody knows: the standard encoder writes the
            # first as Flask would, and raises Flask's TypeError for the second.
            text = super().dumps(obj, **({"indent": 2} if indent else
                                        {"separators": (",", ":")}))
            return text.encode("utf-8")

    # dumps() stays Flask's (the standard encoder): only the answers, the hot path, change.
    def response(self, *args: Any, **kwargs: Any):
        obj = self._prepare_response_obj(args, kwargs)
        indent = (self.compact is None and self._app.debug) or self.compact is False
        return self._app.response_class(self._bytes(obj, indent) + b"\n",
                                        mimetype=self.mimetype)


def install(app: Flask) -> None:
    app.json = OrjsonProvider(app)
