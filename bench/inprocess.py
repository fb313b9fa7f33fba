"""In-process figures for `make bench` (run by bench/run.py with the API's production
environment, on the seeded database): one certificate PDF (time and size), bulk issuance for a
course with 1,000 completed enrollments, and the CPU of one password check in each scheme. Prints JSON."""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select  # noqa: E402

from app import create_app  # noqa: E402
from models import Certificate, db  # noqa: E402
from services import certificate_service  # noqa: E402
from utils import passwords  # noqa: E402


def main(bulk_course_id: int) -> dict:
    app = create_app("production")
    figures = {}
    with app.app_context():
        certificate = db.session.scalar(select(Certificate).order_by(Certificate.id).limit(1))
        certificate_service.render_pdf(certificate)  # fonts and images loaded once
        times, size = [], 0
        for _ in range(50):
            started = time.perf_counter()
            size = len(certificate_service.render_pdf(certificate))
            times.append((time.perf_counter() - started) * 1000)
        figures["certificate_pdf"] = {"median_ms": round(statistics.median(times), 2),
                                      "p90_ms": round(sorted(times)[44], 2),
                                      "size_kb": round(size / 1024, 1)}

        started = time.perf_counter()
        result = certificate_service.bulk_issue(bulk_course_id)
        figures["bulk_issuance"] = {"seconds": round(time.perf_counter() - started, 2),
                                    "issued": result.issued, "failed": result.failed}

        # Sign-ins per core: the spec's PBKDF2 against the default Argon2id (utils/passwords).
        figures["password_check"] = {}
        for scheme, rounds in (("pbkdf2", 5), ("argon2id", 40)):
            app.config["PASSWORD_HASH_SCHEME"] = scheme
            hashed = passwords.hash_password("Bench-Passw0rd")
            started = time.process_time()  # CPU: the figure is per core
            for _ in range(rounds):
                assert passwords.verify(hashed, "Bench-Passw0rd")
            per_check = (time.process_time() - started) / rounds
            figures["password_check"][scheme] = {
                "method": hashed.rsplit("$", 2)[0] if scheme == "argon2id"
                else app.config["PASSWORD_HASH_METHOD"],
                "ms": round(per_check * 1000, 1),
                "checks_per_second_per_core": round(1 / per_check, 1)}
    return figures


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
