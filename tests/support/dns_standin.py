"""A DNS server for one name with changeable addresses: what Docker's embedded DNS is to the
compose proxy (the service name `web` answers with one address per replica).

`DnsStandin("web", ["127.0.0.2", "127.0.0.3"])` answers UDP queries on 127.0.0.1 (port
`port`) with those A records (TTL 1 s); `set_addresses([...])` scales the "service" up or down;
any other name is NXDOMAIN, and other record types get an empty answer. `queries` counts the
questions asked about the name."""
from __future__ import annotations

import socket
import struct
import threading


class DnsStandin:
    def __init__(self, name: str, addresses: list[str]):
        self.name = name.lower()
        self.queries = 0
        self._addresses = list(addresses)
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def set_addresses(self, addresses: list[str]) -> None:
        with self._lock:
            self._addresses = list(addresses)

    def stop(self) -> None:
        self._running = False
        self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> "DnsStandin":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the protocol (RFC 1035: a header, one question, answers) ---------------------------

    def _serve(self) -> None:
        while self._running:
            try:
                query, client = self._sock.recvfrom(512)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            answer = self._answer(query)
            if answer is not None:
                self._sock.sendto(answer, client)

    def _answer(self, query: bytes) -> bytes | None:
        if len(query) < 17:
            return None
        ident, _flags, questions = struct.unpack("!HHH", query[:6])
        if questions != 1:
            return None
        labels, position = [], 12
        while position < len(query) and query[position] != 0:
            length = query[position]
            labels.append(query[position + 1:position + 1 + length].decode("ascii", "replace"))
            position += 1 + length
        question_end = position + 5  # the zero byte, type, class
        if question_end > len(query):
            return None
        qtype, = struct.unpack("!H", query[position + 1:position + 3])
        question = query[12:question_end]
        name = ".".join(labels).lower().rstrip(".")
        if name != self.name:
            return struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
        with self._lock:
            self.queries += 1
            addresses = list(self._addresses) if qtype == 1 else []
        records = b"".join(
            struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(address)
            for address in addresses)
        return struct.pack("!HHHHHH", ident, 0x8180, 1, len(addresses), 0, 0) + question + \
            records
