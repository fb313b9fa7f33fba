"""A local stand-in for Sentry's ingestion endpoint, for tests that drive the real sentry-sdk.

`SentryStub()` listens on a free port on 127.0.0.1; `dsn` points the SDK at it (project 1).
The SDK posts envelopes to /api/1/envelope/ (gzip-compressed unless brotli is installed, which
it is not here); each is kept decoded in `envelopes`, with `events()` listing the error events.
"""
from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PUBLIC_KEY = "0123456789abcdef0123456789abcdef"


class SentryStub:
    def __init__(self):
        self.envelopes: list[bytes] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/api/1/envelope/":
                    with stub._lock:
                        stub.envelopes.append(body)
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def dsn(self) -> str:
        return f"http://{PUBLIC_KEY}@127.0.0.1:{self._server.server_address[1]}/1"

    def events(self) -> list[dict]:
        """The error events received (an envelope is a header line, then item header and item
        payload lines)."""
        found = []
        with self._lock:
            envelopes = list(self.envelopes)
        for envelope in envelopes:
            lines = envelope.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2]):
                if json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "SentryStub":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
