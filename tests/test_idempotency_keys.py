"""`Idempotency-Key` on the POSTs that create money or access (issue 17): create order, Stripe
checkout, enroll, refund request, the admin's decision and refund. Modelled on Stripe's API and
the IETF httpapi Idempotency-Key draft: the same key and request from the same user within
IDEMPOTENCY_KEY_HOURS gets the first answer again (`Idempotent-Replayed: true`) and never a
second object; another request under the key is 422; while the first still runs, 409 with
Retry-After; a 5xx releases the key. Keys live in PostgreSQL (the table idempotency_keys), so
every worker and host agrees (the concurrent case runs on gunicorn in
tests/test_money_races.py).

The gateways are the real SDKs against the stand-ins; runs on SQLite and PostgreSQL.
"""
from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from flask_jwt_extended import create_access_token
from sqlalchemy import func, select, update

from app import create_app
from models import (
    Course,
    Enrollment,
    IdempotencyKey,
    Payment,
    RefundRequest,
    User,
    db,
)
from utils.pipeline import idempotency as idempotency_keys
from tests.support.razorpay_stub import KEY_ID, KEY_SECRET, WEBHOOK_SECRET, RazorpayStub
from utils.helpers import utcnow

API = "/api/v1"
PAY = f"{API}/payments"
_SERIAL = itertools.count(1)


def _memory_sqlite(uri: str) -> bool:
    return uri in ("sqlite://", "sqlite:///:memory:")


@pytest.fixture(scope="module")
def stub():
    with RazorpayStub(KEY_ID, KEY_SECRET, WEBHOOK_SECRET) as server:
        yield server


@pytest.fixture
def gw(app, stub):
    stub.reset()
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    built = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": uri, "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"],
        "RAZORPAY_KEY_ID": KEY_ID, "RAZORPAY_KEY_SECRET": KEY_SECRET,
        "RAZORPAY_WEBHOOK_SECRET": WEBHOOK_SECRET, "RAZORPAY_API_BASE": stub.url,
        "RATE_LIMIT_PAYMENT_CREATE": "1000 per minute",
        "RATE_LIMIT_PAYMENT_VERIFY": "1000 per minute"})
    separate = _memory_sqlite(uri)
    if separate:
        with built.app_context():
            db.create_all()
    yield built
    stub.recover()
    with built.app_context():
        db.session.remove()
        if separate:
            db.drop_all()
        db.engine.dispose()


@pytest.fixture
def client(gw):
    return gw.test_client()


def user(gw, role: str = "student") -> tuple[int, dict]:
    n = next(_SERIAL)
    with gw.app_context():
        account = User(email=f"idem-{role}{n}-{uuid.uuid4().hex[:6]}@example.com",
                       first_name=role.capitalize(), last_name=f"Key{n}", role=role,
                       is_active=True, is_email_verified=True)
        account.set_password("Passw0rd!")
        db.session.add(account)
        db.session.commit()
        return account.id, {"Authorization": f"Bearer {create_access_token(account)}"}


def course(gw, price: str = "499.00") -> int:
    n = next(_SERIAL)
    with gw.app_context():
        row = Course(title=f"Keyed course {n}", slug=f"keyed-{n}-{uuid.uuid4().hex[:6]}",
                     instructor_id=user(gw, "instructor")[0], price=Decimal(price),
                     currency="INR", status="published", published_at=utcnow())
        db.session.add(row)
        db.session.commit()
        return row.id


def count(gw, model, *where) -> int:
    with gw.app_context():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def keyed(headers: dict, key: str) -> dict:
    return {**headers, "Idempotency-Key": key}


def test_the_same_key_returns_the_first_answer_and_no_second_order(gw, client, stub):
    student, headers = user(gw)
    first_course, second_course = course(gw), course(gw)
    first = client.post(f"{PAY}/razorpay/create-order", json={"course_id": first_course},
                        headers=keyed(headers, "order-key-1"))
    assert first.status_code == 201, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    for route in (f"{PAY}/razorpay/create-order", f"{PAY}/create-order"):  # the alias too
        again = client.post(route, json={"course_id": first_course},
                            headers=keyed(headers, "order-key-1"))
        assert again.status_code == 201 and again.get_json() == first.get_json()
        assert again.headers["Idempotent-Replayed"] == "true"
    assert count(gw, Payment) == 1 and len(stub.requests_to("/v1/orders")) == 1

    # Another body under the same key: 422, nothing written.
    reused = client.post(f"{PAY}/razorpay/create-order", json={"course_id": second_course},
                         headers=keyed(headers, "order-key-1"))
    assert reused.status_code == 422
    assert reused.get_json()["code"] == "idempotency_key_reused"
    assert count(gw, Payment) == 1 and len(stub.requests_to("/v1/orders")) == 1
    # A key is the user's own: another user's identical key is another request.
    _, other = user(gw)
    assert client.post(f"{PAY}/razorpay/create-order", json={"course_id": first_course},
                       headers=keyed(other, "order-key-1")).status_code == 201
    assert count(gw, Payment) == 2


def test_a_refused_request_is_replayed_as_refused(gw, client):
    """A 4xx the route answered is the first answer too (here 402, a paid course)."""
    _, headers = user(gw)
    paid = course(gw)
    first = client.post(f"{API}/enrollments", json={"course_id": paid},
                        headers=keyed(headers, "enroll-1"))
    assert first.status_code == 402
    again = client.post(f"{API}/enrollments", json={"course_id": paid},
                        headers=keyed(headers, "enroll-1"))
    assert (again.status_code, again.get_json()) == (402, first.get_json())
    assert again.headers["Idempotent-Replayed"] == "true"


def test_enroll_and_refund_request_with_keys(gw, client, stub):
    student, headers = user(gw)
    free = course(gw, "0.00")
    answers = [client.post(f"{API}/enrollments/create-enrollments/{free}",
                           headers=keyed(headers, "enroll-free")) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 201]
    assert count(gw, Enrollment) == 1

    paid = course(gw)
    order = client.post(f"{PAY}/razorpay/create-order", json={"course_id": paid},
                        headers=headers).get_json()["order"]
    payment, signature = stub.pay(order["order_id"])
    assert client.post(f"{PAY}/razorpay/verify", headers=headers, json={
        "razorpay_order_id": order["order_id"], "razorpay_payment_id": payment["id"],
        "razorpay_signature": signature}).status_code == 200
    asked = [client.post(f"{PAY}/{order['payment_id']}/refund-request",
                         json={"reason": "Not for me"}, headers=keyed(headers, "refund-ask"))
             for _ in range(3)]
    assert [a.status_code for a in asked] == [201, 201, 201]
    assert len({a.get_json()["refund_request"]["id"] for a in asked}) == 1
    assert count(gw, RefundRequest) == 1
    # Without the key, the second ask is the usual conflict.
    again = client.post(f"{PAY}/{order['payment_id']}/refund", json={"reason": "Not for me"},
                        headers=headers)
    assert again.status_code == 409 and again.get_json()["code"] == "refund_already_requested"


def test_an_approval_retried_with_its_key_is_not_made_twice(gw, client, stub):
    student, headers = user(gw)
    paid = course(gw)
    order = client.post(f"{PAY}/razorpay/create-order", json={"course_id": paid},
                        headers=headers).get_json()["order"]
    payment, signature = stub.pay(order["order_id"])
    client.post(f"{PAY}/razorpay/verify", headers=headers, json={
        "razorpay_order_id": order["order_id"], "razorpay_payment_id": payment["id"],
        "razorpay_signature": signature})
    request_id = client.post(f"{PAY}/{order['payment_id']}/refund-request",
                             json={"reason": "Not for me"},
                             headers=headers).get_json()["refund_request"]["id"]
    _, admin = user(gw, "admin")
    decide = [client.put(f"{API}/admin/refund-requests/{request_id}",
                         json={"action": "approve"}, headers=keyed(admin, "approve-1"))
              for _ in range(2)]
    assert [d.status_code for d in decide] == [200, 200]
    assert decide[1].get_json() == decide[0].get_json()
    assert decide[1].headers["Idempotent-Replayed"] == "true"
    assert len(stub.refunds) == 1
    # The same key to reject it: another request, 422.
    reject = client.put(f"{API}/admin/refund-requests/{request_id}",
                        json={"action": "reject"}, headers=keyed(admin, "approve-1"))
    assert reject.status_code == 422


def test_a_server_error_releases_the_key(gw, client, stub):
    _, headers = user(gw)
    paid = course(gw)
    stub.go_down()
    down = client.post(f"{PAY}/razorpay/create-order", json={"course_id": paid},
                       headers=keyed(headers, "order-down"))
    assert down.status_code == 503
    assert count(gw, IdempotencyKey) == 0 and count(gw, Payment) == 0
    stub.recover()
    up = client.post(f"{PAY}/razorpay/create-order", json={"course_id": paid},
                     headers=keyed(headers, "order-down"))
    assert up.status_code == 201 and "Idempotent-Replayed" not in up.headers
    assert count(gw, Payment) == 1


@pytest.mark.parametrize("value", ["", " ", "x" * 256, "bad\u00e9key", "tab\there", '""'])
def test_a_malformed_key_is_400_and_claims_nothing(gw, client, value):
    _, headers = user(gw)
    response = client.post(f"{API}/enrollments", json={"course_id": course(gw, "0.00")},
                           headers=keyed(headers, value) if value.isascii() else headers | {
                               "Idempotency-Key": value.encode().decode("latin-1")})
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["code"] == "invalid_idempotency_key"
    assert count(gw, IdempotencyKey) == 0 and count(gw, Enrollment) == 0


def test_a_quoted_key_is_the_key(gw, client):
    """The draft sends the key as a structured-field string: "abc" and abc are one key."""
    _, headers = user(gw)
    free = course(gw, "0.00")
    first = client.post(f"{API}/enrollments", json={"course_id": free},
                        headers=keyed(headers, '"sf-key-1"'))
    again = client.post(f"{API}/enrollments", json={"course_id": free},
                        headers=keyed(headers, "sf-key-1"))
    assert first.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true"


def test_invalid_input_claims_no_key(gw, client):
    _, headers = user(gw)
    bad = client.post(f"{API}/enrollments", json={"course_id": "x"},
                      headers=keyed(headers, "validation"))
    assert bad.status_code == 422 and bad.get_json()["code"] == "validation_error"
    assert count(gw, IdempotencyKey) == 0
    good = client.post(f"{API}/enrollments", json={"course_id": course(gw, "0.00")},
                       headers=keyed(headers, "validation"))
    assert good.status_code == 201


def test_a_key_in_progress_is_409_until_its_lease_runs_out(gw, client):
    student, headers = user(gw)
    free = course(gw, "0.00")
    body = {"course_id": free}
    with gw.test_request_context(f"{API}/enrollments", method="POST", json=body):
        fingerprint = idempotency_keys.fingerprint("enrollments.enroll", {}, body)
    with gw.app_context():
        now = utcnow()
        db.session.add(IdempotencyKey(user_id=student, key="held", fingerprint=fingerprint,
                                      endpoint="enrollments.enroll", status="in_progress",
                                      created_at=now, locked_until=now + timedelta(seconds=60)))
        db.session.commit()
    busy = client.post(f"{API}/enrollments", json=body, headers=keyed(headers, "held"))
    assert busy.status_code == 409 and busy.get_json()["code"] == "idempotency_key_in_use"
    assert busy.headers["Retry-After"] == "1"
    assert count(gw, Enrollment) == 0
    # Its request died (the lease ran out): the retry takes the key over and runs.
    with gw.app_context():
        db.session.execute(update(IdempotencyKey).values(locked_until=utcnow()))
        db.session.commit()
    taken = client.post(f"{API}/enrollments", json=body, headers=keyed(headers, "held"))
    assert taken.status_code == 201 and count(gw, Enrollment) == 1


def test_a_key_is_forgotten_after_its_lifetime(gw, client):
    _, headers = user(gw)
    first_course, second_course = course(gw, "0.00"), course(gw, "0.00")
    assert client.post(f"{API}/enrollments", json={"course_id": first_course},
                       headers=keyed(headers, "old")).status_code == 201
    hours = gw.config["IDEMPOTENCY_KEY_HOURS"]
    with gw.app_context():
        db.session.execute(update(IdempotencyKey).values(
            created_at=utcnow() - timedelta(hours=hours, minutes=1)))
        db.session.commit()
    # An old key names a new request: it runs (no 422, no replay).
    fresh = client.post(f"{API}/enrollments", json={"course_id": second_course},
                        headers=keyed(headers, "old"))
    assert fresh.status_code == 201 and "Idempotent-Replayed" not in fresh.headers
    assert count(gw, Enrollment) == 2
    # The worker's tick purges keys past their lifetime.
    with gw.app_context():
        db.session.execute(update(IdempotencyKey).values(
            created_at=utcnow() - timedelta(hours=hours, minutes=1)))
        db.session.commit()
        assert idempotency_keys.purge_expired() == 1
        db.session.commit()
    assert count(gw, IdempotencyKey) == 0


def test_the_header_is_in_the_api_description(gw, client):
    document = client.get(f"{API}/openapi.json").get_json()
    for path, method in (("/api/v1/payments/razorpay/create-order", "post"),
                         ("/api/v1/payments/stripe/create-checkout", "post"),
                         ("/api/v1/enrollments", "post"),
                         ("/api/v1/payments/{payment_id}/refund-request", "post"),
                         ("/api/v1/admin/refund-requests/{request_id}", "put"),
                         ("/api/v1/admin/payments/{payment_id}/refund", "post")):
        operation = document["paths"][path][method]
        headers = [p for p in operation.get("parameters", []) if p["in"] == "header"]
        assert [p["name"] for p in headers] == ["Idempotency-Key"], (path, headers)
        assert headers[0]["required"] is False
        responses = operation["responses"]
        assert {"400", "409", "422"} <= set(responses), path
        # Every success may be a replay, said by its header; a key still in use is retried.
        successes = [status for status in responses if status.startswith("2")]
        assert successes, path
        for status in successes:
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("Response"), (path, status, ref)  # a typed body
            assert set(responses[status]["headers"]) == {"Idempotent-Replayed"}, (path, status)
        assert "Retry-After" in responses["409"]["headers"], path
        assert "Idempotency-Key" in responses["422"]["description"], path
    # Operations without the header say nothing of replays.
    listing = document["paths"]["/api/v1/payments/history"]["get"]["responses"]["200"]
    assert "Idempotent-Replayed" not in listing.get("headers", {})
