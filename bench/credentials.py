"""What credentials cost a certificate, measured in-process (not a test, not part of `make
bench`'s load scenarios): one certificate's credential signature, its PDF signature, the PDF
render they add to, and bulk issuance of 1,000 certificates for one course, on a scratch
PostgreSQL database (dropped afterwards). Prints JSON.

    TMPDIR=... .venv/bin/python bench/credentials.py [POSTGRES_SERVER_URL [REDIS_URL]]

(Redis only receives the queued PDF job, which this script then runs itself.)
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from app import create_app  # noqa: E402
from models import BackgroundJob, Certificate, Course, Enrollment, User, db  # noqa: E402
from services import certificate_service  # noqa: E402
from services.credentials import data_integrity, keys, pdf_signing  # noqa: E402
from utils.helpers import utcnow  # noqa: E402

STUDENTS = 1000


def timed(function, repeat: int) -> dict:
    function()  # warm (contexts parsed, keys loaded)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 2),
            "p90_ms": round(times[int(len(times) * 0.9) - 1], 2)}


def seed(course_title: str) -> int:
    now = utcnow()
    instructor = User(email=f"bench-instructor-{uuid.uuid4().hex[:6]}@example.com",
                      first_name="Ada", last_name="Lovelace", role="instructor",
                      password_hash="x", is_active=True, is_email_verified=True)
    db.session.add(instructor)
    db.session.flush()
    course = Course(title=course_title, slug=f"bench-{uuid.uuid4().hex[:8]}",
                    instructor_id=instructor.id, status="published",
                    description="A course to measure credential issuance.")
    db.session.add(course)
    db.session.flush()
    users = [User(email=f"learner{n}-{uuid.uuid4().hex[:6]}@example.com", first_name="Learner",
                  last_name=f"Number {n}", role="student", password_hash="x", is_active=True,
                  is_email_verified=True) for n in range(STUDENTS)]
    db.session.add_all(users)
    db.session.flush()
    db.session.add_all([Enrollment(user_id=u.id, course_id=course.id, status="completed",
                                   enrolled_at=now - timedelta(days=2), completed_at=now,
                                   progress_percent=100) for u in users])
    db.session.commit()
    return course.id


def main(server: str, redis_url: str) -> dict:
    url = make_url(server.replace("postgresql://", "postgresql+psycopg2://", 1))
    name = f"wt19_bench_{uuid.uuid4().hex[:8]}"
    root = create_engine(url, isolation_level="AUTOCOMMIT")
    with root.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        app = create_app("testing", overrides={
            "SQLALCHEMY_DATABASE_URI": url.set(database=name).render_as_string(False),
            "UPLOAD_FOLDER": tempfile.mkdtemp(prefix="lms-credential-bench-")})
        figures = {}
        with app.app_context():
            db.create_all()
            course_id = seed("Applied Machine Learning")
            # As production runs it: the PDFs go to a job of their own (queued in Redis here,
            # and run below, timed on its own).
            app.config.update(JOBS_BACKEND="rq", REDIS_URL=redis_url)
            started = time.perf_counter()
            result = certificate_service.bulk_issue(course_id)
            figures["bulk_issuance_1000"] = {"seconds": round(time.perf_counter() - started, 2),
                                             "issued": result.issued, "failed": result.failed}
            started = time.perf_counter()
            rendered = certificate_service.render_missing_pdfs(course_id)
            figures["render_and_sign_1000_pdfs_job"] = {
                "seconds": round(time.perf_counter() - started, 2), **rendered}
            jobs_left = db.session.scalars(select(BackgroundJob.id)).all()
            figures["jobs_queued"] = len(jobs_left)
            certificate = db.session.scalar(select(Certificate).order_by(Certificate.id).limit(1))
            credential = json.loads(certificate.credential_json)
            unsigned = {k: v for k, v in credential.items() if k != "proof"}
            key, pdf_key = keys.credential_key(), keys.pdf_key()
            rendered = certificate_service.render_pdf(certificate)
            figures["render_pdf"] = timed(lambda: certificate_service.render_pdf(certificate), 50)
            figures["sign_credential"] = timed(
                lambda: data_integrity.add_proof(unsigned, key, utcnow()), 50)
            figures["verify_credential"] = timed(
                lambda: data_integrity.verify_proof(credential, keys.credential_public_key), 50)
            figures["sign_pdf"] = timed(lambda: pdf_signing.sign(
                rendered, attachment_name="x.credential.json",
                attachment=certificate.credential_json.encode(), signed_at=utcnow(),
                signer_name="Bench", key=pdf_key), 50)
            signed = certificate_service.pdf_path(certificate).read_bytes()
            figures["check_signed_pdf"] = timed(lambda: pdf_signing.check(signed), 20)
            figures["sizes"] = {"pdf_unsigned_kb": round(len(rendered) / 1024, 1),
                                "pdf_signed_kb": round(len(signed) / 1024, 1),
                                "credential_kb": round(len(certificate.credential_json) / 1024, 1)}
            db.session.remove()
            db.engine.dispose()
        return figures
    finally:
        with root.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        root.dispose()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1
                          else "postgresql://postgres@127.0.0.1:5432/postgres",
                          sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6379/13"),
                     indent=2))
