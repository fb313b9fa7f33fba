"""The fast paths' query arguments, remembered per model and query string
(utils/pipeline/fast_reads._parsed_query): the same answers as parsing each time, refusals
included, and each caller its own model."""
from __future__ import annotations

import pytest

from utils import validation
from utils.pipeline import fast_reads


@pytest.fixture
def view_query(app):
    return app.view_functions["public.courses"].api_query


def _arguments(query_string: str, model):
    return fast_reads.query_arguments({"QUERY_STRING": query_string}, model,
                                      validation.parsed_query)


def test_a_repeated_query_is_parsed_once_and_each_caller_owns_its_model(app, view_query):
    fast_reads._parsed_query.cache_clear()
    with app.app_context():
        first = _arguments("per_page=500&difficulty=beginner&page=2", view_query)
        second = _arguments("per_page=500&difficulty=beginner&page=2", view_query)
        parsed = fast_reads._parsed_query.cache_info()
        assert (parsed.misses, parsed.hits) == (1, 1)
        assert first is not second and first == second
        assert (second.page, second.per_page) == (2, 100)  # the contract's cap, as Flask reads it
        first.page = 7
        assert _arguments("per_page=500&difficulty=beginner&page=2", view_query).page == 2


@pytest.mark.parametrize("query_string", [
    "difficulty=beginner%00", "q%01=x", "page=0", "page=1e9", "per_page=-1", "page=" + "9" * 40,
    "difficulty=" + "%0A" * 3,
])
def test_what_flask_refuses_is_refused_every_time(app, view_query, query_string):
    with app.app_context():
        assert _arguments(query_string, view_query) is None
        assert _arguments(query_string, view_query) is None


def test_a_view_without_a_model_ignores_its_query_and_none_gives_defaults(app, view_query):
    with app.app_context():
        assert _arguments("anything=1", None) is False
        assert _arguments("bad=%01", None) is None  # the middleware's 422 holds for any view
        defaults = fast_reads.query_arguments({}, view_query, validation.parsed_query)
        assert (defaults.page, defaults.per_page) == (1, 20)


def test_the_memo_is_bounded(app, view_query):
    fast_reads._parsed_query.cache_clear()
    with app.app_context():
        for n in range(600):
            _arguments(f"page={n + 1}", view_query)
    assert fast_reads._parsed_query.cache_info().currsize == 512
