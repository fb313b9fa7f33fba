"""A list whose items are already written as JSON (utils.helpers.Written): an answer joins its
fragments instead of writing the items again, and says the same bytes as writing them would.

The catalog's pages answer this way (services/course_service `_written_summaries`): under
tests and the debugger every such answer is also written item by item and compared
(utils/validation `_shaped_json`), so the whole catalog suite checks the join; here, the
production branch (no comparison), its fallback and the refusal of a fragment the model
would write otherwise."""
from __future__ import annotations

import json

import pytest
from flask import Flask
from sqlalchemy import text
from typing_extensions import TypedDict

from models import db
from services import catalog_service, course_service
from tests.support.learning import (  # noqa: F401 (actor, instructor: fixtures)
    actor,
    build_course,
    instructor,
)
from utils.helpers import Written
from utils.json_provider import OrjsonProvider
from utils.responses import CourseListResponse
from utils.validation import UndeclaredAnswer, _adapter, _shaped_json


class Item(TypedDict):
    id: int
    name: str


class Page(TypedDict):
    title: str
    items: list[Item]
    total: int


class Nested(TypedDict):
    items: list[Item]
    inner: dict


ITEMS = [{"id": 1, "name": "Zoë \"quoted\" items:[]"}, {"id": 2, "name": "two"}]


def written(items) -> Written:
    """`items` written as the item model writes each."""
    return Written([_adapter(Item).dump_json(item) for item in items])


def made(items: Written) -> bool:
    """Whether something read the items (parsed from their fragments once, then kept)."""
    return items._items is not None


def test_the_production_answer_joins_the_fragments_without_making_the_items():
    items = written(ITEMS)
    body = {"title": "A page", "items": items, "total": 2}
    data = _shaped_json(body, Page, False, "test")
    assert data == _adapter(Page).dump_json({**body, "items": ITEMS})
    assert json.loads(data)["items"] == ITEMS
    assert not made(items)  # nothing read the items: they were never parsed


def test_an_empty_list_and_a_marker_inside_a_string_are_joined_as_well():
    items = written([])
    body = {"title": 'say "items":[] here', "items": items, "total": 0}
    data = _shaped_json(body, Page, False, "test")
    assert data == _adapter(Page).dump_json({**body, "items": []})


def test_a_marker_found_twice_writes_the_items_instead():
    """The same key, empty, elsewhere in the body: the join cannot tell which is the list,
    so the items are made and written by the model."""
    items = written(ITEMS)
    body = {"items": items, "inner": {"items": []}}
    data = _shaped_json(body, Nested, False, "test")
    assert data == _adapter(Nested).dump_json({"items": ITEMS, "inner": {"items": []}})
    assert made(items)


def test_under_tests_a_fragment_the_model_writes_otherwise_is_refused():
    """Same items, other bytes (spaced, escaped as the standard library escapes): what the
    join would send is not what the model writes, and tests and the debugger say so."""
    spaced = [json.dumps(item).encode() for item in ITEMS]
    items = Written(spaced)
    body = {"title": "A page", "items": items, "total": 2}
    assert _shaped_json(body, Page, False, "test") != _adapter(Page).dump_json(
        {**body, "items": ITEMS})  # what production would have sent
    with pytest.raises(UndeclaredAnswer, match="written ahead"):
        _shaped_json(body, Page, True, "test")


def test_under_tests_the_items_are_checked_against_the_model():
    items = Written([b'{"id":"not a number","name":"x"}'])
    with pytest.raises(UndeclaredAnswer, match="does not describe"):
        _shaped_json({"title": "t", "items": items, "total": 1}, Page, True, "test")


def test_read_as_a_list_made_once():
    items = written(ITEMS)
    assert len(items) == 2 and not made(items)
    assert items == ITEMS and items[1]["name"] == "two" and list(items) == ITEMS
    assert items == Written(list(items.fragments))
    assert items != ITEMS[:1] and (items == "not a list") is False
    assert items.made() is items.made()  # parsed once
    with pytest.raises(TypeError):
        hash(items)


def test_any_other_answer_writes_the_fragments_through_orjson():
    app = Flask("written")
    provider = OrjsonProvider(app)
    items = written(ITEMS)
    with app.app_context():
        body = provider.response({"items": items, "n": 2}).get_data()
        # An integer past 64 bits sends the whole answer to the standard encoder.
        huge = provider.response({"items": written(ITEMS), "n": 2 ** 70}).get_data()
    assert json.loads(body) == {"items": ITEMS, "n": 2}
    assert body.startswith(b'{"items":[{"id":1,') and not made(items)
    assert json.loads(huge) == {"items": ITEMS, "n": 2 ** 70}


def test_a_catalog_page_is_answered_as_its_summaries_written_by_the_model(app, client,
                                                                          instructor):
    """Outside the debugger and tests (`checking` off), the page's bytes are the join, and
    they are what the model writes for the courses' own summaries, whatever the text holds:
    control characters, a line separator, quotes around the list's own marker, a description
    longer than a kept summary may hold (written each time), stored as legacy rows might be,
    past the API's validation."""
    hostile = 'Ctl \x01\x1f \u2028 "courses":[] \\ Zoë \U0001F600'
    ids = [build_course(client, instructor, f"Written {n}", modules=(("L1",),)).id
           for n in range(3)]
    with app.app_context():
        db.session.execute(text("UPDATE courses SET title = :title, description = :long "
                                "WHERE id = :id"),
                           {"title": hostile, "long": "d" * (course_service._KEPT_TEXT + 1),
                            "id": ids[1]})
        db.session.commit()
        courses = db.session.scalars(catalog_service.course_query(sort="oldest")).all()
        summaries = [course_service.course_summary(course) for course in courses]
    for _ in range(2):  # the summaries written, then kept (the long one written again)
        with app.test_request_context("/"):
            page = course_service.catalog_page(catalog_service.catalog_shape(sort="oldest"),
                                               1, 20)
            assert isinstance(page["courses"], Written)
            joined = _shaped_json(page, CourseListResponse, False, "test")
        assert joined == _adapter(CourseListResponse).dump_json(
            {"courses": summaries, "pagination": page["pagination"]})
    assert [c["title"] for c in json.loads(joined)["courses"]][-3:] == [
        "Written 0", hostile, "Written 2"]
    answer = client.get("/api/v1/public/get-courses?sort=oldest")
    assert answer.status_code == 200 and answer.get_data() == joined
