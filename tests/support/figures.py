"""A known set of payments, certificates and job records, and the figures the metrics endpoint
must report for it (utils/metrics.py, DatabaseFigures): used in-process and against a real
gunicorn's scratch database alike.

`seed_figures()` runs inside an app context of the database to fill; it returns nothing, the
expected figures are the constants below."""
from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from models import BackgroundJob, Certificate, Course, Payment, User, db

# (gateway, currency, status, amount, refunded amount, settled, refunded)
PAYMENTS = (
    ("razorpay", "INR", "completed", "499.00", "0.00", True, False),
    ("razorpay", "INR", "refunded", "299.00", "299.00", True, True),
    ("razorpay", "INR", "pending", "100.00", "0.00", False, False),
    ("stripe", "USD", "completed", "20.00", "0.00", True, False),
    ("stripe", "USD", "completed", "12.50", "5.00", True, True),  # refunded in part
    ("stripe", "USD", "failed", "15.00", "0.00", False, False),
)
CERTIFICATES = ("valid", "valid", "revoked")
# (kind, status, attempts)
JOBS = (
    ("email.send", "finished", 1),
    ("email.send", "failed", 3),
    ("email.send", "retrying", 2),
    ("email.send", "queued", 1),  # failed once, then retried by an admin
    ("certificates.bulk_issue", "started", 2),
)

EXPECTED = {
    ("lms_payments", (("gateway", "razorpay"), ("status", "completed"))): 1,
    ("lms_payments", (("gateway", "razorpay"), ("status", "refunded"))): 1,
    ("lms_payments", (("gateway", "razorpay"), ("status", "pending"))): 1,
    ("lms_payments", (("gateway", "stripe"), ("status", "completed"))): 2,
    ("lms_payments", (("gateway", "stripe"), ("status", "failed"))): 1,
    ("lms_payments_settled_total", (("gateway", "razorpay"),)): 2,
    ("lms_payments_settled_total", (("gateway", "stripe"),)): 2,
    ("lms_payments_failed_total", (("gateway", "razorpay"),)): 0,
    ("lms_payments_failed_total", (("gateway", "stripe"),)): 1,
    ("lms_payments_refunded_total", (("gateway", "razorpay"),)): 1,
    ("lms_payments_refunded_total", (("gateway", "stripe"),)): 1,
    ("lms_payments_settled_amount_total", (("currency", "INR"),)): 798.0,
    ("lms_payments_settled_amount_total", (("currency", "USD"),)): 32.5,
    ("lms_payments_refunded_amount_total", (("currency", "INR"),)): 299.0,
    ("lms_payments_refunded_amount_total", (("currency", "USD"),)): 5.0,
    ("lms_certificates_issued_total", ()): 3,
    ("lms_certificates", (("status", "valid"),)): 2,
    ("lms_certificates", (("status", "revoked"),)): 1,
    ("lms_jobs", (("kind", "email.send"), ("status", "finished"))): 1,
    ("lms_jobs", (("kind", "email.send"), ("status", "failed"))): 1,
    ("lms_jobs", (("kind", "email.send"), ("status", "retrying"))): 1,
    ("lms_jobs", (("kind", "email.send"), ("status", "queued"))): 1,
    ("lms_jobs", (("kind", "certificates.bulk_issue"), ("status", "started"))): 1,
    # finished 1-1, failed 3, retrying 2, queued 1; started 2-1
    ("lms_job_failed_attempts_total", (("kind", "email.send"),)): 6,
    ("lms_job_failed_attempts_total", (("kind", "certificates.bulk_issue"),)): 1,
}


def samples(families) -> dict:
    """{(sample name, sorted label pairs): value} of prometheus_client metric families."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in families for sample in family.samples}


def seed_figures() -> None:
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    instructor = User(email=f"teacher-{tag}@example.com", first_name="T", last_name="F",
                      role="instructor", is_active=True)
    students = [User(email=f"student{n}-{tag}@example.com", first_name="S", last_name=str(n),
                     role="student", is_active=True) for n in range(len(PAYMENTS))]
    db.session.add_all([instructor, *students])
    db.session.flush()
    courses = [Course(title=f"Figures {n}", slug=f"figures-{n}-{tag}",
                      instructor_id=instructor.id, status="published", price=Decimal("10.00"),
                      currency="USD", published_at=now) for n in range(len(PAYMENTS))]
    db.session.add_all(courses)
    db.session.flush()
    for n, (gateway, currency, status, amount, refunded, settled, was_refunded) in enumerate(
            PAYMENTS):
        db.session.add(Payment(
            user_id=students[n].id, course_id=courses[n].id, gateway=gateway,
            gateway_order_id=f"order_{tag}_{n}", amount=Decimal(amount), currency=currency,
            status=status, refunded_amount=Decimal(refunded),
            paid_at=now - timedelta(hours=2) if settled else None,
            refunded_at=now - timedelta(hours=1) if was_refunded else None))
    for n, status in enumerate(CERTIFICATES):
        db.session.add(Certificate(
            certificate_number=f"FIG-{tag}-{n}", user_id=students[n].id,
            course_id=courses[n].id, holder_name="S", course_title=f"Figures {n}",
            completion_date=date.today(), status=status,
            revoked_at=now if status == "revoked" else None))
    for kind, status, attempts in JOBS:
        db.session.add(BackgroundJob(id=str(uuid.uuid4()), kind=kind, status=status, args={},
                                     attempts=attempts, created_at=now))
    db.session.commit()
