"""Every kind of background job and what it runs, and the tasks of the worker's periodic tick,
in one table: services/jobs.py keeps the queue and knows no domain; the app factory calls
`register()`."""
from __future__ import annotations

from models import db
from services import (
    admin_service,
    auth_service,
    certificate_service,
    email_service,
    jobs,
    notification_service,
)
from services.payments import reconcile
from utils.pipeline import idempotency


def _email_send(args: dict) -> dict:
    email_service.send_email(args["to"], args["subject"], args["text"], args.get("html"),
                             email_service.decode_attachments(args.get("attachments", [])))
    return {"sent": 1}


def _bulk_issue(args: dict) -> dict:
    result = certificate_service.bulk_issue(int(args["course_id"]))
    return {"issued": result.issued, "skipped": result.skipped, "failed": result.failed}


def _render_pdfs(args: dict) -> dict:
    return certificate_service.render_missing_pdfs(int(args["course_id"]))


def _reconcile(args: dict) -> dict:
    return {"outcomes": reconcile.reconcile_pending(args.get("older_than_minutes"))}


KINDS = {
    "email.send": _email_send,
    # E-mail a notification to its recipients, in batches; a retry skips those already sent.
    "notifications.email": notification_service.email_fanout,
    "certificates.bulk_issue": _bulk_issue,
    # The PDFs of a bulk issuance, rendered and signed after its credentials are committed.
    "certificates.render_pdfs": _render_pdfs,
    "payments.reconcile": _reconcile,
    # A password-reset request: the account lookup, the link and its e-mail, off the request.
    "auth.password_reset": auth_service.send_password_reset,
}
def _purge_idempotency_keys() -> int:
    purged = idempotency.purge_expired()
    db.session.commit()
    return purged


def _prune_sign_in_records() -> int:
    pruned = auth_service.prune_sign_in_records()
    db.session.commit()
    return pruned


TICK_TASKS = {"reconciled": reconcile.reconcile_pending,
              "idempotency keys purged": _purge_idempotency_keys,
              "sign-in records pruned": _prune_sign_in_records,
              # The admin figures' appended tally rows folded, one per bucket (PostgreSQL).
              "tally rows after folding": admin_service.compact_tallies}


def register() -> None:
    jobs.register_kinds(KINDS, TICK_TASKS)
