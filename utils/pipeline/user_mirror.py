"""The request's caller from its token and a Redis mirror of the user fields access depends on.

Every authenticated request used to load the caller's user row (one statement, ~1.5 ms of
ORM) to learn four things: that the account exists, its role, whether it is active, and
`tokens_valid_after` (tokens issued before it are refused: password change or reset,
deactivation, "log out everywhere"). Those four now come from one Redis key per user,
`lms:user:<id>`, read in the request's one MGET of shared state (shared_state.prefetch reads
the key of the bearer token's subject), and the ORM row is loaded only when a view asks for
more than `Caller` holds.

Why a stale copy is never trusted:

- Every value carries the mirror's generation: the value of `lms:shared:synced`, which
  `shared_state.sync()` sets to a new random token each time it runs (every
  SHARED_SYNC_SECONDS, and at once after a failed mirror write deleted it). A value of another
  generation, like a missing one, is ignored: the row is read and the key refilled. So a write
  that reached the database but not Redis (by a process that died, a Redis error, or SQL
  outside the ORM) is honoured within SHARED_SYNC_SECONDS, the bound the revocation mirror
  already has, and at once when the failing write could delete the marker.
- Every ORM write of role, is_active or tokens_valid_after, and every deletion of a user, on
  any host (the routes, services, `flask shell`), is written to Redis by the session's
  after-commit hook (`_capture` / `_publish`), overwriting the key in the current
  generation; a deleted user becomes a tombstone.
- A request that read the row fills the key only if the generation it saw is still current
  and the key holds no value of that generation (one Lua script): a reader that read the row
  just before a writer committed cannot overwrite the writer's newer value.
- With Redis down, not in sync, or the key not prefetched, the row is read as before.
"""
from __future__ import annotations

import logging

import redis
from flask import current_app, g, has_app_context
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from models import User, db
from utils.errors import Unauthorized
from utils.pipeline import redis_client, shared_state

log = logging.getLogger("lms.shared")

MIRRORED = ("role", "is_active", "tokens_valid_after")
GONE = b"-"  # the tombstone of a deleted user
PENDING = "lms_user_mirror"  # session.info: {user id: value} flushed, to publish after commit
UNSURE = "lms_user_mirror_unsure"  # session.info: a rollback may have undone a captured write

# KEYS: the sync marker, the user's key. ARGV: the generation the request saw, the value, TTL.
_FILL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local current = redis.call('GET', KEYS[2])
if current and string.sub(current, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then return 0 end
redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[3])
return 1
"""
# KEYS: the sync marker, then the users' keys. ARGV: TTL, then one value per user key.
_PUBLISH = """
local generation = redis.call('GET', KEYS[1])
for i = 2, #KEYS do
  if generation then
    redis.call('SET', KEYS[i], generation .. '|' .. ARGV[i], 'EX', ARGV[1])
  else
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""


user_key = shared_state.user_key


class Caller:
    """The signed-in user as the access checks see it. Any other attribute is read from (and
    written to) the user row, loaded once a request, so a view or a service that needs more
    than these fields still works, and one that needs only these fields loads nothing."""

    __slots__ = ("id", "role", "is_active", "tokens_valid_after_ms")

    def __init__(self, user_id: int, role: str, is_active: bool,
                 tokens_valid_after_ms: int | None) -> None:
        for name, value in zip(self.__slots__, (user_id, role, is_active, tokens_valid_after_ms)):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"<Caller {self.id} {self.role}{'' if self.is_active else ' inactive'}>"

    def row(self) -> User | None:
        user = g.get("caller_row")
        if user is None or user.id != self.id:
            user = db.session.get(User, self.id)
            if user is None:  # deleted since the token was checked
                raise Unauthorized("The account for this token no longer exists",
                                   code="token_invalid")
            g.caller_row = user
        return user

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.row(), name)

    def __setattr__(self, name: str, value) -> None:
        if name in self.__slots__:
            raise AttributeError(f"{name} of the caller is read-only: change the user row")
        setattr(self.row(), name, value)

    @classmethod
    def of(cls, user: User) -> Caller:
        valid_after = user.tokens_valid_after
        return cls(user.id, user.role, bool(user.is_active),
                   round(valid_after.timestamp() * 1000) if valid_after is not None else None)

    def encode(self) -> bytes:
        valid_after = "" if self.tokens_valid_after_ms is None else str(self.tokens_valid_after_ms)
        return f"{self.role}|{int(self.is_active)}|{valid_after}".encode()

    @classmethod
    def decode(cls, user_id: int, value: bytes) -> Caller | None:
        """The caller a mirrored value holds; None for a value that is not one (written by
        something else): the row is read instead."""
        try:
            role, active, valid_after = value.decode().split("|")
            return cls(user_id, role, active == "1", int(valid_after) if valid_after else None)
        except ValueError:  # UnicodeDecodeError included
            return None


def caller(user_id: int) -> Caller | None:
    """The caller for a verified token's subject: from the mirror when it answers for this
    request's generation, else from the row (then mirrored for the next request). None when
    the account no longer exists."""
    key = user_key(user_id)
    known, value = shared_state.mirrored(key)
    generation = shared_state.generation() if known else None
    if value is not None and generation is not None:
        prefix = generation + b"|"
        if value.startswith(prefix):
            rest = value[len(prefix):]
            if rest == GONE:
                return None
            found = Caller.decode(user_id, rest)
            if found is not None:
                return found
    user = db.session.get(User, user_id)
    g.caller_row = user
    found = Caller.of(user) if user is not None else None
    if generation is not None:
        _fill(key, generation, found.encode() if found is not None else GONE)
    return found


def _ttl() -> int:
    return current_app.config["SHARED_SYNC_SECONDS"] + 5


def _fill(key: str, generation: bytes, value: bytes) -> None:
    client = redis_client.get()
    try:
        client.eval(_FILL, 2, shared_state.SYNCED, key, generation, value, _ttl())
    except redis.RedisError as exc:  # the next request reads the row again
        log.warning("user mirror not filled: %s", exc)


# --- the writes -------------------------------------------------------------------------------

def _capture(session: Session, _flush_context) -> None:
    """after_flush: note the mirrored state of every user whose mirrored fields changed or
    who was deleted (values as flushed; a later flush in the transaction overwrites)."""
    pending = None
    for obj in session.dirty:
        if isinstance(obj, User):
            state = inspect(obj)
            if any(state.attrs[name].history.has_changes() for name in MIRRORED):
                pending = session.info.setdefault(PENDING, {})
                pending[obj.id] = Caller.of(obj).encode()
    for obj in session.deleted:
        if isinstance(obj, User) and obj.id is not None:
            pending = session.info.setdefault(PENDING, {})
            pending[obj.id] = GONE


def _rolled_back(session: Session, previous) -> None:
    """after_soft_rollback: the outermost rollback drops what was captured; a savepoint's
    rollback may have undone part of it, so the commit then makes every host distrust the
    mirror (until the next sync) instead of publishing a value the database may not hold."""
    if not session.info.get(PENDING):
        return
    if previous.nested:
        session.info[UNSURE] = True
    else:
        session.info.pop(PENDING, None)
        session.info.pop(UNSURE, None)


def _publish(session: Session) -> None:
    """after_commit: write the committed values to Redis in the current generation."""
    if session.in_nested_transaction():  # a savepoint released: the real commit is to come
        return
    pending = session.info.pop(PENDING, None)
    unsure = session.info.pop(UNSURE, False)
    if not pending or not has_app_context():
        return
    client = redis_client.get()
    if client is None:
        return
    if unsure:
        shared_state.distrust()
        return
    ids = list(pending)
    try:
        client.eval(_PUBLISH, 1 + len(ids), shared_state.SYNCED,
                    *[user_key(i) for i in ids], _ttl(), *[pending[i] for i in ids])
    except redis.RedisError as exc:
        log.error("could not mirror a user's access to Redis: %s", exc)
        shared_state.distrust()


def register() -> None:
    """Listen to every session of the app's (once a process)."""
    target = db.session
    for name, listener in (("after_flush", _capture), ("after_soft_rollback", _rolled_back),
                           ("after_commit", _publish)):
        if not event.contains(target, name, listener):
            event.listen(target, name, listener)
