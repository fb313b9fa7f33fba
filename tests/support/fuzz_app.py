"""The app the fuzz tests (tests/test_schema_fuzz.py, tests/test_hostile_walk.py) send their
requests to: the testing configuration with the rate limits and the address blocking out of
the way, since thousands of requests from one address, many of them hostile on purpose, would
otherwise hit a limit or a block and hide the rest of the run."""
from __future__ import annotations

from flask_jwt_extended import create_access_token

from app import create_app
from models import User, db

HIGH = "100000 per minute"
RATE_LIMITS = ("RATE_LIMIT_REGISTER", "RATE_LIMIT_LOGIN", "RATE_LIMIT_REFRESH",
               "RATE_LIMIT_PASSWORD_RESET_REQUEST", "RATE_LIMIT_PASSWORD_RESET_VERIFY",
               "RATE_LIMIT_PUBLIC", "RATE_LIMIT_SEARCH", "RATE_LIMIT_CONTACT",
               "RATE_LIMIT_VERIFY", "RATE_LIMIT_PAYMENT_CREATE", "RATE_LIMIT_PAYMENT_VERIFY")


def fuzz_app():
    return create_app("testing", overrides={
        **{name: HIGH for name in RATE_LIMITS},
        "IP_BLOCK_MAX_UNSAFE_INPUTS": 10**9, "IP_BLOCK_MAX_ACCOUNTS": 10**9,
    })


def signed_in(app, roles=("student", "instructor", "admin")) -> dict[str, str]:
    """{role: access token} of a user per role, created when missing (the suite empties every
    table after each test). No password: tokens are minted, and hashing one costs more than
    the requests of a test."""
    with app.app_context():
        if db.engine.url.render_as_string() == "sqlite://":
            db.create_all()  # an in-memory database of this app's own
        tokens = {}
        for role in roles:
            email = f"fuzz-{role}@example.com"
            user = db.session.scalar(db.select(User).where(User.email == email))
            if user is None:
                user = User(email=email, role=role, first_name="Fuzz", last_name=role.title(),
                            is_active=True, password_hash="!")
                db.session.add(user)
                db.session.commit()
            tokens[role] = create_access_token(user)
        db.session.remove()
    return tokens
