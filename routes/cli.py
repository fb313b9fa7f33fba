"""Flask CLI commands, registered in one place (app.py calls `register_commands`): create-admin,
seed-demo, payments reconcile, figures recount and fold, worker. Like the blueprints beside it,
a way in from outside: it reads its options and calls services."""
from __future__ import annotations

import os

import click
import redis
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import select

from models import SigningKey, User, db
from services import admin_service, certificate_service, jobs
from services.credentials import keys
from services.payments import reconcile as payments_reconcile
from services.demo_catalog import DEMO_STUDENT, catalog_is_empty, seed_demo
from utils.validators import normalise_email, password_problems


def register_commands(app: Flask) -> None:
    # `flask shell` already has `db` and every model: Flask-SQLAlchemy adds them
    # (add_models_to_shell).

    @app.cli.command("create-admin")
    @click.option("--email", prompt=True, help="The admin's email address.")
    @click.option("--first-name", default="Admin", show_default=True)
    @click.option("--last-name", default="User", show_default=True)
    @click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
                  help="Prompted for when not given.")
    def create_admin(email, first_name, last_name, password):
        """Create an administrator account (refuses an email already in use)."""
        try:
            email = normalise_email(email)
        except ValueError as exc:
            raise click.ClickException(f"Invalid email: {exc}")
        if db.session.scalar(select(User.id).where(User.email == email)):
            raise click.ClickException(f"A user with the email {email} already exists.")
        problems = password_problems(password, email)
        if problems:
            raise click.ClickException("The password " + "; ".join(problems) + ".")
        admin = User(email=email, first_name=first_name, last_name=last_name, role="admin",
                     is_active=True, is_email_verified=True)
        admin.set_password(password)
        db.session.add(admin)
        db.session.commit()
        click.echo(f"Admin user created with ID: {admin.id}")

    @app.cli.command("seed-demo")
    @click.option("--if-empty", is_flag=True, help="Only seed when there are no courses yet.")
    def seed_demo_command(if_empty):
        """Seed a small demo catalog (idempotent)."""
        if if_empty and not catalog_is_empty():
            click.echo("The catalog already has courses; nothing seeded.")
            return
        created = seed_demo()
        click.echo(f"Demo catalog: {created['courses']} course(s) created.")
        for email, password in created["users"].items():
            click.echo(f"  log in as {email} with password {password}")
        if not created["users"]:
            click.echo(f"  demo users already existed (e.g. {DEMO_STUDENT}); "
                       "their passwords were printed when they were created.")

    payments_cli = AppGroup("payments", help="Payment maintenance.")
    app.cli.add_command(payments_cli)

    @payments_cli.command("reconcile")
    @click.option("--older-than", type=int, default=None,
                  help="Minutes a payment must have been pending (default PAYMENT_PENDING_TIMEOUT).")
    def reconcile(older_than):
        """Ask the gateways about payments still pending and settle or expire them."""
        counts = payments_reconcile.reconcile_pending(older_than)
        click.echo(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing pending")

    figures_cli = AppGroup("figures", help="The admin figures' tallies (on PostgreSQL).")
    app.cli.add_command(figures_cli)

    @figures_cli.command("recount")
    def recount():
        """Rebuild the tallies the admin figures read from users, enrollments and payments
        (after restoring data with its triggers off, say); writers of those tables wait."""
        click.echo(f"Tally rows written: {admin_service.recount_tallies()}")

    @figures_cli.command("fold")
    def fold():
        """Fold the rows the triggers appended into one per bucket (the worker's tick does)."""
        click.echo(f"Tally rows left: {admin_service.compact_tallies()}")

    credentials_cli = AppGroup("credentials", help="Verifiable credentials and their keys.")
    app.cli.add_command(credentials_cli)

    @credentials_cli.command("keys")
    def list_keys():
        """Every key the academy has signed with, and whether it is still published."""
        for key in db.session.scalars(select(SigningKey).order_by(SigningKey.id)):
            state = f"withdrawn {key.withdrawn_at:%Y-%m-%d}" if key.withdrawn_at else "published"
            click.echo(f"{key.purpose:10} {key.fingerprint}  first used "
                       f"{key.first_used_at:%Y-%m-%d}  {state}")

    @credentials_cli.command("withdraw-key")
    @click.argument("fingerprint")
    def withdraw_key(fingerprint):
        """Withdraw a compromised key: it leaves the DID document and the PDF check, and what
        it signed no longer verifies. (Rotate to a new key first.)"""
        if keys.withdraw(fingerprint) is None:
            raise click.ClickException("No recorded key has this fingerprint.")
        db.session.commit()
        click.echo(f"Withdrawn: {fingerprint}")

    @credentials_cli.command("backfill")
    def backfill():
        """Sign a credential for every certificate issued before credentials were (their
        PDFs stay as issued, checked by their hash)."""
        click.echo(f"Credentials signed: {certificate_service.backfill_credentials()}")

    @app.cli.command("worker")
    @click.option("--burst", is_flag=True, help="Stop once the queue is empty.")
    @click.option("--simple", is_flag=True,
                  help="Run jobs in this process rather than in a fork per job.")
    def worker(burst, simple):
        """Run background jobs from Redis (RQ): e-mail, fan-out, bulk certificates and the
        periodic payment reconciliation. Start as many as the load needs, on any host."""
        from rq import SimpleWorker, Worker  # RQ (~55 ms to import) only for this command

        cfg = current_app.config
        if not cfg.get("REDIS_URL"):
            raise click.ClickException("REDIS_URL is not set: without Redis, jobs run inline "
                                       "in the request that starts them.")
        if cfg.get("JOBS_BACKEND") != "rq":
            raise click.ClickException("JOBS_BACKEND is not 'rq': the web process runs jobs "
                                       "inline and queues none.")
        # No socket timeout: the worker blocks on the queue between jobs.
        connection = redis.Redis.from_url(cfg["REDIS_URL"], socket_connect_timeout=5,
                                          health_check_interval=30)
        db.engine.dispose()  # a forked job opens connections of its own
        os.register_at_fork(after_in_child=lambda: db.engine.dispose(close=False))
        jobs.schedule_tick(connection, delay=0)
        worker_class = SimpleWorker if simple else Worker
        queue = jobs.queue(connection)
        worker_class([queue], connection=connection).work(
            burst=burst, with_scheduler=True, logging_level=cfg.get("LOG_LEVEL", "INFO"))
