"""A bound on how many requests of one host hash passwords at once.

Checking a PBKDF2-SHA256 hash at 600,000 iterations holds a sync worker for about 125 ms. A burst
of sign-ins (or a credential-stuffing run) could otherwise occupy every worker and stall every
other request behind them. At most PASSWORD_HASH_SLOTS requests per host hash at a time (file
locks in PASSWORD_HASH_SLOT_DIR, shared by the workers of the host; gunicorn.conf.py sets it to
one less than the cores); a request that finds no slot free within PASSWORD_HASH_WAIT_MS
answers 503 `busy` with Retry-After: 1 instead of waiting. 0 slots: no bound (development).
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
from contextlib import contextmanager

from flask import current_app

from utils.errors import ServiceUnavailable


class HashingBusy(ServiceUnavailable):
    code = "busy"
    message = "Too many sign-ins at once; try again in a moment"


def _directory() -> str:
    directory = current_app.config.get("PASSWORD_HASH_SLOT_DIR") or os.path.join(
        tempfile.gettempdir(), f"lms-hash-slots-{os.getuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return directory


def _take(directory: str, slots: int) -> int | None:
    for number in range(slots):
        fd = os.open(os.path.join(directory, f"slot-{number}"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
    return None


@contextmanager
def slot():
    """Hold one of the host's hashing slots for the duration of the block."""
    slots = current_app.config.get("PASSWORD_HASH_SLOTS", 0)
    if slots <= 0:
        yield
        return
    directory = _directory()
    deadline = time.monotonic() + current_app.config["PASSWORD_HASH_WAIT_MS"] / 1000
    fd = _take(directory, slots)
    while fd is None:
        if time.monotonic() >= deadline:
            raise HashingBusy(headers={"Retry-After": "1"})
        time.sleep(0.005)
        fd = _take(directory, slots)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
