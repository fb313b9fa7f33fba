"""Contact forms through the HTTP API: the public submission (validated, stored with the
sender's address, rate limited per address, every active admin notified in-app) and the
admin-only list, read, update and delete, each audited.

Every test checks the status code, the body and what the database holds afterwards.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from models import AuditLog, ContactForm, Notification, db
from tests.support.assertions import count, error, fetch, ok

API = "/api/v1"
FORMS = f"{API}/contact/contact-forms"
UTC = timezone.utc

VALID = {"name": "Jane O'Brien", "email": "Jane.OBrien@Example.com", "subject": "Course dates",
         "message": "Hello! When does the next C# & SQL cohort start?",
         "phone_number": "+91 98765 43210"}


def fetch_all(app, model, *where) -> list:
    with app.app_context():
        return list(db.session.scalars(select(model).where(*where).order_by(model.id)))


def submit(client, payload: dict, ip: str = "203.0.113.7", headers: dict | None = None):
    return client.post(FORMS, json=payload, headers=headers or {},
                       environ_base={"REMOTE_ADDR": ip})


# --- public submission ------------------------------------------------------------------------

def test_submit_stores_the_form_and_notifies_every_admin(app, client, make_user):
    admins = [make_user("admin"), make_user("admin")]
    dormant_admin = make_user("admin", is_active=False)
    student = make_user("student")
    instructor = make_user("instructor")

    body = ok(submit(client, VALID), 201)
    form = body["contact_form"]
    assert body["message"]
    assert isinstance(form["id"], int)
    assert (form["name"], form["email"], form["subject"], form["status"]) == (
        "Jane O'Brien", "jane.obrien@example.com", "Course dates", "new")
    assert form["message"] == VALID["message"] and form["created_at"]
    assert "ip_address" not in form  # the sender's address is not echoed back

    row = fetch(app, ContactForm, ContactForm.id == form["id"])
    assert (row.status, row.ip_address, row.email, row.phone_number, row.admin_note) == (
        "new", "203.0.113.7", "jane.obrien@example.com", "+91 98765 43210", None)
    assert count(app, ContactForm) == 1

    notes = fetch_all(app, Notification)
    assert sorted(n.user_id for n in notes) == sorted(admins)
    for note in notes:
        assert note.data == {"contact_form_id": form["id"]}
        assert "Jane O'Brien" in note.title and note.is_read is False
    assert not {dormant_admin, student, instructor} & {n.user_id for n in notes}

    # Name, email and message are all that is required; a signed-in caller is fine too.
    minimal = ok(submit(client, {"name": "Li", "email": "li@example.com", "message": "Hi"},
                        ip="203.0.113.8"), 201)["contact_form"]
    assert minimal["subject"] is None and minimal["phone_number"] is None
    assert count(app, ContactForm) == 2
    assert count(app, Notification) == 4


@pytest.mark.parametrize("change, field", [
    ({"message": None}, "message"),
    ({"message": ""}, "message"),
    ({"message": "   "}, "message"),
    ({"email": "not-an-email"}, "email"),
    ({"email": "jane@"}, "email"),
    ({"message": "Nice site <script>alert(1)</script>"}, "message"),
    ({"subject": "<iframe src=//evil.example>"}, "subject"),
    ({"name": "N" * 101}, "name"),
    ({"name": None}, "name"),
    ({"message": "x" * 5001}, "message"),
    ({"phone_number": "call me maybe"}, "phone_number"),
])
def test_invalid_submissions_are_422_and_store_nothing(app, client, make_user, change, field):
    admin = make_user("admin")
    payload = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    body = error(submit(client, payload, ip="198.51.100.20"), 422)
    assert field in body["details"], body
    assert count(app, ContactForm) == 0
    assert count(app, Notification, Notification.user_id == admin) == 0


def test_non_json_submission_is_refused(app, client):
    response = client.post(FORMS, data="name=x&email=y", content_type="text/plain",
                           environ_base={"REMOTE_ADDR": "198.51.100.21"})
    assert response.status_code in (400, 415, 422), response.status_code
    assert count(app, ContactForm) == 0


def test_submissions_are_rate_limited_per_address(app, client):
    assert app.config["RATE_LIMIT_CONTACT"] == "5 per hour"
    for n in range(5):
        ok(submit(client, {**VALID, "subject": f"Attempt {n}"}, ip="192.0.2.50"), 201)
    response = submit(client, {**VALID, "subject": "Attempt 6"}, ip="192.0.2.50")
    body = error(response, 429)
    retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and 0 < int(retry_after) <= 3600, retry_after
    assert body["code"]
    assert count(app, ContactForm) == 5
    assert count(app, ContactForm, ContactForm.subject == "Attempt 6") == 0
    # Another address is not affected.
    ok(submit(client, VALID, ip="192.0.2.51"), 201)
    assert count(app, ContactForm) == 6


# --- admin routes -----------------------------------------------------------------------------

ADMIN_ROUTES = [("GET", FORMS), ("GET", FORMS + "/{id}"), ("PUT", FORMS + "/{id}"),
                ("DELETE", FORMS + "/{id}")]


def add_form(app, *, created_at: datetime, **fields) -> int:
    values = {"name": "Sender", "email": "sender@example.com", "message": "Hello",
              "status": "new", "ip_address": "192.0.2.1", "created_at": created_at,
              "updated_at": created_at}
    values.update(fields)
    with app.app_context():
        form = ContactForm(**values)
        db.session.add(form)
        db.session.commit()
        return form.id


@pytest.fixture
def forms(app) -> dict[str, int]:
    now = datetime.now(UTC)
    return {
        "alice": add_form(app, created_at=now - timedelta(hours=3), name="Alice",
                          email="alice@example.com", subject="Billing question",
                          message="I was charged twice."),
        "bob": add_form(app, created_at=now - timedelta(hours=2), name="Bob",
                        email="bob@corp.example", subject=None, message="Refund please",
                        status="resolved", admin_note="Refunded"),
        "carol": add_form(app, created_at=now - timedelta(hours=1), name="Carol",
                          email="carol@example.org", subject="Help",
                          message="Where is my CERTIFICATE?", status="in_progress"),
    }


def test_the_admin_routes_exist_in_the_url_map(app):
    rules = {(m, r.rule) for r in app.url_map.iter_rules() if r.rule.startswith(FORMS)
             for m in r.methods - {"HEAD", "OPTIONS"}}
    assert rules == {("POST", FORMS), ("GET", FORMS), ("GET", FORMS + "/<int:form_id>"),
                     ("PUT", FORMS + "/<int:form_id>"), ("DELETE", FORMS + "/<int:form_id>")}


@pytest.mark.parametrize("method, path", ADMIN_ROUTES)
@pytest.mark.parametrize("caller", ["guest", "student", "instructor"])
def test_admin_routes_refuse_everyone_else(app, client, make_user, auth_headers, forms,
                                           method, path, caller):
    form_id = forms["alice"]
    headers = {} if caller == "guest" else auth_headers(make_user(caller))
    kwargs = {"json": {"status": "closed", "admin_note": "hijacked"}} if method == "PUT" else {}
    response = client.open(path.format(id=form_id), method=method, headers=headers, **kwargs)
    if caller == "guest":
        error(response, 401, "token_missing")
    else:
        error(response, 403, "role_required")
    row = fetch(app, ContactForm, ContactForm.id == form_id)
    assert row is not None and (row.status, row.admin_note) == ("new", None)
    assert count(app, AuditLog) == 0


def list_ids(client, headers, query: str = "") -> list[int]:
    body = ok(client.get(f"{FORMS}{query}", headers=headers))
    return [f["id"] for f in body["contact_forms"]]


def test_admin_lists_with_search_and_status_filters(client, make_user, auth_headers, forms):
    headers = auth_headers(make_user("admin"))
    a, b, c = forms["alice"], forms["bob"], forms["carol"]
    body = ok(client.get(FORMS, headers=headers))
    assert [f["id"] for f in body["contact_forms"]] == [c, b, a]  # newest first
    assert body["pagination"]["total"] == 3
    assert list_ids(client, headers, "?status=resolved") == [b]
    assert list_ids(client, headers, "?status=new") == [a]
    assert list_ids(client, headers, "?status=closed") == []
    # Search covers name, e-mail, subject and message, case-insensitively.
    assert list_ids(client, headers, "?search=certificate") == [c]
    assert list_ids(client, headers, "?search=BILLING") == [a]
    assert list_ids(client, headers, "?search=corp.example") == [b]
    assert list_ids(client, headers, "?search=alice") == [a]
    assert list_ids(client, headers, "?search=example&status=in_progress") == [c]
    assert list_ids(client, headers, "?search=%25") == []  # a literal %, not a wildcard
    page = ok(client.get(f"{FORMS}?per_page=2&page=2", headers=headers))
    assert [f["id"] for f in page["contact_forms"]] == [a]
    assert page["pagination"]["pages"] == 2 and page["pagination"]["has_prev"] is True
    error(client.get(f"{FORMS}?status=spam", headers=headers), 422)


def test_admin_reads_one(client, make_user, auth_headers, forms):
    headers = auth_headers(make_user("admin"))
    form = ok(client.get(f"{FORMS}/{forms['bob']}", headers=headers))["contact_form"]
    assert (form["id"], form["name"], form["status"], form["admin_note"]) == (
        forms["bob"], "Bob", "resolved", "Refunded")
    error(client.get(f"{FORMS}/999999", headers=headers), 404)


def test_admin_updates_status_and_note_with_an_audit_entry(app, client, make_user, auth_headers,
                                                           forms):
    admin = make_user("admin")
    headers = auth_headers(admin)
    form_id = forms["alice"]
    body = ok(client.put(f"{FORMS}/{form_id}", headers=headers,
                         json={"status": "resolved", "admin_note": "Called back, refunded"}))
    assert body["contact_form"]["status"] == "resolved"
    assert body["contact_form"]["admin_note"] == "Called back, refunded"
    row = fetch(app, ContactForm, ContactForm.id == form_id)
    assert (row.status, row.admin_note) == ("resolved", "Called back, refunded")

    [entry] = fetch_all(app, AuditLog)
    assert (entry.action, entry.actor_id, entry.target_type, entry.target_id) == (
        "contact_form.update", admin, "contact_form", form_id)
    assert entry.details["before"] == {"status": "new", "admin_note": None}
    assert entry.details["after"] == {"status": "resolved", "admin_note": "Called back, refunded"}

    # Only the note; the status stays.
    ok(client.put(f"{FORMS}/{form_id}", headers=headers, json={"admin_note": "Closed the loop"}))
    row = fetch(app, ContactForm, ContactForm.id == form_id)
    assert (row.status, row.admin_note) == ("resolved", "Closed the loop")
    assert count(app, AuditLog, AuditLog.action == "contact_form.update") == 2

    for bad in ({"status": "spam"}, {"admin_note": "<script>alert(1)</script>"},
                {"admin_note": "x" * 5001}):
        body = error(client.put(f"{FORMS}/{form_id}", headers=headers, json=bad), 422)
        assert set(body["details"]) & {"status", "admin_note"}, body
    row = fetch(app, ContactForm, ContactForm.id == form_id)
    assert (row.status, row.admin_note) == ("resolved", "Closed the loop")
    assert count(app, AuditLog) == 2
    error(client.put(f"{FORMS}/999999", headers=headers, json={"status": "closed"}), 404)


def test_admin_deletes_with_an_audit_entry(app, client, make_user, auth_headers, forms):
    admin = make_user("admin")
    headers = auth_headers(admin)
    form_id = forms["carol"]
    assert ok(client.delete(f"{FORMS}/{form_id}", headers=headers))["message"]
    assert fetch(app, ContactForm, ContactForm.id == form_id) is None
    assert count(app, ContactForm) == 2
    [entry] = fetch_all(app, AuditLog)
    assert (entry.action, entry.actor_id, entry.target_type, entry.target_id) == (
        "contact_form.delete", admin, "contact_form", form_id)
    assert entry.details["email"] == "carol@example.org"

    error(client.get(f"{FORMS}/{form_id}", headers=headers), 404)
    error(client.delete(f"{FORMS}/{form_id}", headers=headers), 404)
    assert count(app, AuditLog) == 1
    # The audit log lists it for admins.
    entries = ok(client.get(f"{API}/admin/audit-log?target_type=contact_form",
                            headers=headers))["entries"]
    assert [(e["action"], e["target_id"]) for e in entries] == [("contact_form.delete", form_id)]
