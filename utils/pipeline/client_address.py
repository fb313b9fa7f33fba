"""The caller's network address, as rate limits, IP blocking and the audit log see it. Behind a
reverse proxy, app.py's ProxyFix (TRUSTED_PROXIES) has already put X-Forwarded-For's client
into `remote_addr`."""
from __future__ import annotations

from flask import request


def client_ip() -> str:
    return request.remote_addr or "unknown"
