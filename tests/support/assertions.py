"""What most test files ask of a response and of the database: the one place for them.

`ok` and `error` check the status (showing the body when it is not the expected one); `error`
also checks the contract's one error shape: {"error": message, "code": machine code,
"details"?}. `count` and `fetch` read the database in an app context of their own."""
from __future__ import annotations

from sqlalchemy import func, select

from models import db


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    return response.get_json()


def error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    body = response.get_json()
    assert isinstance(body, dict) and set(body) <= {"error", "code", "details"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["code"], str) and body["code"], body
    if code is not None:
        assert body["code"] == code, body
    return body


def count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def fetch(app, model, *where):
    """The one row matching `where`, detached with its columns loaded (or None)."""
    with app.app_context():
        return db.session.scalars(select(model).where(*where)).one_or_none()
