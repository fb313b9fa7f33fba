"""The caller's network address, as rate limits, IP blocking and the audit log see it, and the
forwarded headers the app believes.

`TrustedProxies` (wrapped around the WSGI app by app.py) believes `X-Forwarded-For`,
`X-Forwarded-Proto` and `X-Forwarded-Host` only from a peer whose own address is in
TRUSTED_PROXIES (addresses or networks; none by default). From such a peer, X-Forwarded-For is
walked from the right, skipping the trusted proxies, and the first address that is not one of
them is the client; an entry that is not an IP address ends the walk (the last address believed
stays the client). From any other peer the headers are removed from the request before anything
reads them (Flask-Talisman reads X-Forwarded-Proto itself), so a client straight at the app
server cannot choose the address its limits count against, nor the host of a redirect.
"""
from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

from flask import request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                     "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX", "HTTP_FORWARDED")
# A host name or address with an optional port: anything else in X-Forwarded-Host is ignored.
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


def client_ip() -> str:
    return request.remote_addr or "unknown"


def parse_networks(values: Iterable[str] | str | None) -> tuple[Network, ...]:
    """TRUSTED_PROXIES as networks: a comma-separated string or a list of addresses/CIDRs.
    Raises ValueError naming an entry that is neither."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = values.split(",")
    networks = []
    for value in values:
        value = str(value).strip()
        if not value:
            continue
        if value.isdigit():
            raise ValueError(
                f"TRUSTED_PROXIES lists the proxies' addresses or networks (e.g. 10.0.0.0/8), "
                f"not a count: {value!r}")
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"TRUSTED_PROXIES: {value!r} is not an address or network") from None
    return tuple(networks)


@functools.lru_cache(maxsize=4096)
def parse_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in `value` (with or without a port; IPv4-mapped IPv6 as IPv4), else None;
    remembered per string (the addresses are immutable): a peer's is parsed once."""
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1:value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """WSGI middleware: see the module's docstring."""

    def __init__(self, app, networks: Iterable[Network]):
        self.app = app
        self.networks = tuple(networks)

    def trusted(self, address) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def __call__(self, environ, start_response):
        peer = parse_address(environ.get("REMOTE_ADDR") or "")
        if self.networks and self.trusted(peer):
            self._believe(environ, peer)
        for name in FORWARDED_HEADERS:
            environ.pop(name, None)  # believed above or not at all: nothing else reads them
        return self.app(environ, start_response)

    def _believe(self, environ, peer) -> None:
        client = peer
        for entry in reversed(environ.get("HTTP_X_FORWARDED_FOR", "").split(",")):
            address = parse_address(entry)
            if address is None:
                break  # not an address: nothing left of it is believed
            client = address
            if not self.trusted(address):
                break
        if client != peer:
            environ["REMOTE_ADDR"] = str(client)
        proto = _last(environ.get("HTTP_X_FORWARDED_PROTO")).lower()
        if proto in ("http", "https"):
            environ["wsgi.url_scheme"] = proto
        host = _last(environ.get("HTTP_X_FORWARDED_HOST"))
        if host and _HOST.match(host):
            environ["HTTP_HOST"] = host


def _last(value: str | None) -> str:
    """The value the nearest proxy wrote: the last of a comma-separated header."""
    return (value or "").split(",")[-1].strip()
