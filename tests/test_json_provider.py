"""The orjson provider answers what Flask's own provider answered: the same JSON value for every
type the API emits, byte for byte where the text is ASCII."""
from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from markupsafe import Markup

from utils.json_provider import OrjsonProvider


@dataclasses.dataclass
class Point:
    x: int
    y: Decimal


VALUE = {
    "zeta": 1, "alpha": [1, 2.5, None, True, False], "money": Decimal("19.90"),
    "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "day": date(2026, 1, 2),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"), "point": Point(1, Decimal("2.5")),
    "html": Markup("<b>x</b>"), "nested": {"b": {"c": []}, "a": ""}, 7: "int key",
    "tuple": (1, "two"), "huge_float": 1e300, "negative": -2 ** 63,
}


@pytest.fixture
def providers():
    reference_app, our_app = Flask("reference"), Flask("ours")  # providers hold weak refs
    reference = DefaultJSONProvider(reference_app)
    reference.sort_keys = False
    yield reference, OrjsonProvider(our_app)


def test_the_same_bytes_as_flasks_provider_for_ascii(providers):
    reference, ours = providers
    with reference._app.app_context():
        expected = reference.response(VALUE).get_data()
    with ours._app.app_context():
        got = ours.response(VALUE)
    assert got.get_data() == expected
    assert got.mimetype == "application/json" and expected.endswith(b"}\n")


def test_non_ascii_is_the_same_value_in_utf8(providers):
    reference, ours = providers
    text = {"name": "Zoë 学生 \U0001F600", "nul\u0000": "\u2028"}
    with ours._app.app_context():
        body = ours.response(text).get_data()
    with reference._app.app_context():
        expected = reference.response(text).get_data()
    assert json.loads(body) == text == json.loads(expected)
    assert "Zoë 学生".encode() in body


def test_an_integer_past_64_bits_falls_back_to_the_standard_encoder(providers):
    reference, ours = providers
    value = {"big": 2 ** 70, "list": [-(2 ** 64)]}
    with reference._app.app_context():
        expected = reference.response(value).get_data()
    with ours._app.app_context():
        assert ours.response(value).get_data() == expected


def test_an_unknown_type_raises_type_error_as_before(providers):
    _, ours = providers
    with ours._app.app_context(), pytest.raises(TypeError, match="not JSON serializable"):
        ours.response({"a": {1, 2}})


def test_debug_answers_are_indented(providers):
    reference, ours = providers
    ours._app.debug = reference._app.debug = True
    with ours._app.app_context():
        body = ours.response({"a": [1]}).get_data()
    assert body == b'{\n  "a": [\n    1\n  ]\n}\n'
    assert json.loads(body) == {"a": [1]}


def test_the_app_answers_through_it(app, client):
    assert isinstance(app.json, OrjsonProvider)
    # Error answers go through app.json (shaped answers are written by their pydantic model).
    response = client.get("/api/v1/no-such-route")
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert response.data.startswith(b'{"error":') and response.data.endswith(b"}\n")
    assert response.get_json()["code"] == "not_found"
