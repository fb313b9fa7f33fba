"""Password hashes: Argon2id for new ones, Werkzeug's PBKDF2-SHA256 still understood.

New hashes are Argon2id with OWASP's parameters (m = 19 MiB, t = 2, p = 1) through argon2-cffi,
stored in the PHC form `$argon2id$v=19$m=19456,t=2,p=1$salt$hash`. A hash made by Werkzeug
(`pbkdf2:sha256:<iterations>$salt$hash`, this system's former scheme and the original one's)
still verifies; `needs_rehash` tells the caller to store a new hash after a successful check,
which is how existing accounts move to the configured scheme at their next sign-in.

PASSWORD_HASH_SCHEME=pbkdf2 keeps Werkzeug's scheme (PASSWORD_HASH_METHOD) for new hashes; an
Argon2id hash is then kept as it is (it is not weaker), a PBKDF2 one with another method is
rewritten with the configured one. The settings come from the app's config; outside an app
context the production defaults apply.

A leaf: models.User calls it under the host's hashing bound (utils/pipeline/hash_slots.py).
"""
from __future__ import annotations

import secrets
from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app, has_app_context
from werkzeug.security import check_password_hash, generate_password_hash

SCHEMES = ("argon2id", "pbkdf2")
ARGON2_PREFIX = "$argon2id$"
# OWASP Password Storage Cheat Sheet: Argon2id, 19 MiB, 2 iterations, 1 degree of parallelism.
DEFAULTS = {
    "PASSWORD_HASH_SCHEME": "argon2id",
    "PASSWORD_HASH_METHOD": "pbkdf2:sha256:600000",
    "ARGON2_MEMORY_KIB": 19456,
    "ARGON2_TIME_COST": 2,
    "ARGON2_PARALLELISM": 1,
}


def _setting(name: str):
    if has_app_context():
        return current_app.config.get(name, DEFAULTS[name])
    return DEFAULTS[name]


@lru_cache(maxsize=8)
def _hasher(memory_kib: int, time_cost: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism,
                          hash_len=32, salt_len=16, type=Type.ID)


def _argon2() -> PasswordHasher:
    return _hasher(int(_setting("ARGON2_MEMORY_KIB")), int(_setting("ARGON2_TIME_COST")),
                   int(_setting("ARGON2_PARALLELISM")))


def scheme() -> str:
    configured = _setting("PASSWORD_HASH_SCHEME")
    if configured not in SCHEMES:
        raise ValueError(f"PASSWORD_HASH_SCHEME must be one of {SCHEMES}, not {configured!r}")
    return configured


def hash_password(password: str) -> str:
    """A new hash of `password` in the configured scheme."""
    if scheme() == "pbkdf2":
        return generate_password_hash(password, method=_setting("PASSWORD_HASH_METHOD"))
    return _argon2().hash(password)


def verify(stored: str | None, password: str) -> bool:
    """Whether `password` matches the stored hash (Argon2id or Werkzeug PBKDF2); False for an
    empty, unknown or malformed hash."""
    if not stored:
        return False
    if stored.startswith(ARGON2_PREFIX):
        try:
            return _argon2().verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    try:
        return check_password_hash(stored, password)  # pbkdf2:sha256:<n>$salt$hash (or scrypt)
    except ValueError:  # a method Werkzeug does not know
        return False


def needs_rehash(stored: str) -> bool:
    """Whether a hash that has just verified should be replaced by one in the configured
    scheme and cost."""
    if stored.startswith(ARGON2_PREFIX):
        # Argon2id stays Argon2id even under the pbkdf2 scheme; only its cost is brought up.
        return scheme() == "argon2id" and _argon2().check_needs_rehash(stored)
    if scheme() == "argon2id":
        return True
    return not stored.startswith(_setting("PASSWORD_HASH_METHOD") + "$")


_dummy_hashes: dict[tuple, str] = {}


def verify_against_nothing(password: str) -> None:
    """Spend what checking `password` against a real hash of the configured scheme costs (an
    unknown e-mail must not answer faster than a known one)."""
    key = (scheme(), _setting("PASSWORD_HASH_METHOD"), _setting("ARGON2_MEMORY_KIB"),
           _setting("ARGON2_TIME_COST"), _setting("ARGON2_PARALLELISM"))
    if key not in _dummy_hashes:
        _dummy_hashes[key] = hash_password(secrets.token_hex(8))
    verify(_dummy_hashes[key], password)
