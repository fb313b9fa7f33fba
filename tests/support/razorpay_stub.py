"""A local stand-in for the Razorpay v1 API, for tests that drive the REAL `razorpay` SDK over
the network edge (`razorpay.Client(auth=(key, secret), base_url=stub.url)`).

It listens on a free port on 127.0.0.1 in a background thread (a ThreadingHTTPServer, so the
processes of a gunicorn server can reach it too) and answers what the SDK sends: JSON bodies
with HTTP Basic auth `key_id:key_secret`.

- POST /v1/orders                        create an order (kept in `orders`)
- GET  /v1/orders/<id>                   the order
- GET  /v1/orders/<id>/payments          {"entity": "collection", "count", "items"}
- GET  /v1/payments/<id>                 the payment
- POST /v1/payments/<id>/capture         authorized -> captured (amount must match)
- POST /v1/payments/<id>/refund          {"id": "rfnd_...", "entity": "refund", ...}
- GET  /v1/payments/<id>/refunds         {"entity": "collection", "items": [refund, ...]}

Unknown ids answer 400 with Razorpay's error shape
`{"error": {"code": "BAD_REQUEST_ERROR", "description": ...}}` (the SDK raises
BadRequestError); a wrong key answers 401 the same way.

What a test does in place of the customer and of Razorpay's servers:
- `pay(order_id, amount=None, currency=None, status="captured")` -> (payment, signature): the
  payment entity a checkout creates, and the checkout's signature
  HMAC_SHA256(key_secret, f"{order_id}|{payment_id}").
- `webhook(event, payload)` -> (body_str, signature): an event envelope signed with the
  webhook secret over the exact body that must be sent.
- `fail_with(status)` makes every API call answer that status in Razorpay's error shape (500 =
  SERVER_ERROR); `go_down()` closes every connection without an answer (the SDK raises
  requests.ConnectionError); `recover()` undoes both. `fail_next(method, suffix, status)`
  fails one call only; `lose_next_answer(method, suffix)` carries one call out (a refund is
  made) and then closes its connection unanswered, as a gateway that acted and timed out.

Every API request is kept in `requests` (`requests_to(suffix)`, `api_calls(method, path)`).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.support.standins import ReceivedRequest

KEY_ID = "rzp_test_key"
KEY_SECRET = "rzp_secret"
WEBHOOK_SECRET = "whsec_rzp"

_ERROR_CODES = {400: "BAD_REQUEST_ERROR", 401: "BAD_REQUEST_ERROR", 404: "BAD_REQUEST_ERROR",
                502: "GATEWAY_ERROR", 504: "GATEWAY_ERROR"}


def _rid(prefix: str) -> str:
    """A Razorpay-like id: prefix_ and 14 alphanumerics."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return f"{prefix}_" + "".join(secrets.choice(alphabet) for _ in range(14))


def hmac_hex(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def rz_error(status: int, description: str, code: str | None = None) -> tuple[int, dict]:
    return status, {"error": {"code": code or _ERROR_CODES.get(status, "SERVER_ERROR"),
                              "description": description, "source": "NA", "step": "NA",
                              "reason": "NA", "metadata": {}, "field": None}}


class RazorpayStub:
    def __init__(self, key_id: str = KEY_ID, key_secret: str = KEY_SECRET,
                 webhook_secret: str = WEBHOOK_SECRET) -> None:
        self.key_id = key_id
        self.key_secret = key_secret
        self.webhook_secret = webhook_secret
        self.orders: dict[str, dict] = {}
        self.payments: dict[str, dict] = {}
        self.refunds: dict[str, dict] = {}
        self.requests: list[ReceivedRequest] = []
        self._failure: int | None = None
        # (method, path suffix, status, description): the next matching call fails so
        self._faults: list[tuple[str, str, int, str]] = []
        # the state of the refunds the API makes ("processed"; "pending": settled later with
        # settle_refund, as Razorpay does for normal-speed refunds)
        self.refund_status = "processed"
        # (method, path suffix): the next matching call is carried out, then its connection
        # closed without an answer (a gateway that acted, then timed out)
        self._lost_answers: list[tuple[str, str]] = []
        self._failure_description = ""
        self._delay = 0.0
        self._down = False
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "RazorpayStub":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = ReceivedRequest(method=self.command, path=parts.path,
                                          headers={k: v for k, v in self.headers.items()},
                                          body=body)
                if body:
                    try:
                        request.json = json.loads(body)
                    except ValueError:
                        request.json = None
                with stub._lock:
                    stub.requests.append(request)
                    if stub._down:
                        answer = None
                    else:
                        answer = stub._dispatch(request)
                if answer is None:  # "down": the connection closes without an answer
                    self.close_connection = True
                    return
                status, payload = answer
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "RazorpayStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- failure modes ----------------------------------------------------------------------

    def fail_with(self, status: int = 500, description: str = "Something went wrong") -> None:
        """Every API call answers `status` in Razorpay's error shape."""
        with self._lock:
            self._failure, self._failure_description = status, description

    def fail_next(self, method: str, path_suffix: str, status: int = 400,
                  description: str = "Something went wrong") -> None:
        """The next `method` call whose path ends with `path_suffix` answers `status` in
        Razorpay's error shape (and does nothing)."""
        with self._lock:
            self._faults.append((method.upper(), path_suffix, status, description))

    def lose_next_answer(self, method: str, path_suffix: str) -> None:
        """The next matching call is carried out (a refund is made, say), then its connection
        is closed without an answer: the caller cannot know it succeeded."""
        with self._lock:
            self._lost_answers.append((method.upper(), path_suffix))

    def hang(self, seconds: float) -> None:
        """Every API call waits `seconds` before answering (a gateway timing out)."""
        with self._lock:
            self._delay = seconds

    def go_down(self) -> None:
        """Every connection is closed without an answer."""
        with self._lock:
            self._down = True

    def recover(self) -> None:
        with self._lock:
            self._failure, self._down, self._delay = None, False, 0.0
            self._faults.clear()
            self._lost_answers.clear()

    # --- what tests inspect -----------------------------------------------------------------

    def requests_to(self, suffix: str) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith(suffix)]

    def api_calls(self, method: str | None = None, prefix: str = "/v1/") -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix)
                    and (method is None or r.method == method.upper())]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def reset(self) -> None:
        """Forget every order, payment, refund and request; answer normally again."""
        with self._lock:
            self.orders.clear()
            self.payments.clear()
            self.refunds.clear()
            self.requests.clear()
            self._failure, self._down, self._delay = None, False, 0.0
            self._faults.clear()
            self._lost_answers.clear()
            self.refund_status = "processed"

    # --- what the customer and Razorpay's servers do ----------------------------------------

    def create_order(self, amount: int, currency: str = "INR", receipt: str | None = None,
                     notes: dict | None = None) -> dict:
        """An order as if created through the API (tests seeding a database use it)."""
        with self._lock:
            order = {"id": _rid("order"), "entity": "order", "amount": int(amount),
                     "amount_paid": 0, "amount_due": int(amount), "currency": currency,
                     "receipt": receipt, "offer_id": None, "status": "created", "attempts": 0,
                     "notes": notes or {}, "created_at": int(time.time())}
            self.orders[order["id"]] = order
            return dict(order)

    def checkout_signature(self, order_id: str, payment_id: str) -> str:
        return hmac_hex(self.key_secret, f"{order_id}|{payment_id}")

    def pay(self, order_id: str, amount: int | None = None, currency: str | None = None,
            status: str = "captured") -> tuple[dict, str]:
        """A payment of the order as a checkout makes it; returns (payment, signature)."""
        with self._lock:
            order = self.orders.get(order_id)
            if order is None and (amount is None or currency is None):
                raise KeyError(f"unknown order {order_id}: give amount and currency")
            amount = int(order["amount"] if amount is None else amount)
            currency = (order["currency"] if currency is None else currency)
            payment = {
                "id": _rid("pay"), "entity": "payment", "amount": amount, "currency": currency,
                "status": status, "order_id": order_id, "invoice_id": None,
                "international": False, "method": "card", "amount_refunded": 0,
                "refund_status": None, "captured": status == "captured",
                "description": "Course purchase", "card_id": _rid("card"), "bank": None,
                "wallet": None, "vpa": None, "email": "student@example.com",
                "contact": "+919999999999", "notes": [], "fee": None, "tax": None,
                "error_code": None, "error_description": None, "error_source": None,
                "error_step": None, "error_reason": None, "created_at": int(time.time())}
            if status == "failed":
                payment.update(error_code="BAD_REQUEST_ERROR",
                               error_description="Payment failed due to insufficient funds",
                               error_source="customer", error_step="payment_authorization",
                               error_reason="insufficient_funds")
            self.payments[payment["id"]] = payment
            if order is not None:
                order["attempts"] += 1
                order["status"] = "attempted"
                if status == "captured":
                    self._mark_paid(order, payment)
            return dict(payment), self.checkout_signature(order_id, payment["id"])

    def _mark_paid(self, order: dict, payment: dict) -> None:
        order["status"] = "paid"
        order["amount_paid"] = payment["amount"]
        order["amount_due"] = max(0, order["amount"] - payment["amount"])

    def settle_refund(self, refund_id: str, status: str) -> dict:
        """A pending refund ends: "processed", or "failed" (the amount is the payment's
        again). Returns the refund."""
        with self._lock:
            refund = self.refunds[refund_id]
            assert refund["status"] == "pending", refund
            refund["status"] = status
            if status == "failed":
                payment = self.payments[refund["payment_id"]]
                payment["amount_refunded"] -= refund["amount"]
                payment["refund_status"] = "partial" if payment["amount_refunded"] else None
                if payment["status"] == "refunded":
                    payment["status"] = "captured"
            return dict(refund)

    def sign_webhook(self, body: str) -> str:
        return hmac_hex(self.webhook_secret, body)

    def webhook(self, event: str, payload: dict, *, account_id: str = "acc_TestAccount01"
                ) -> tuple[str, str]:
        """(body, signature) of an event; payload is e.g. {"payment": {"entity": {...}}}.
        Send the body exactly as returned: the signature is over these bytes."""
        envelope = {"entity": "event", "account_id": account_id, "event": event,
                    "contains": list(payload), "payload": payload,
                    "created_at": int(time.time())}
        body = json.dumps(envelope, separators=(",", ":"))
        return body, self.sign_webhook(body)

    def payment_event(self, event: str, payment: dict, *, with_order: bool | None = None
                      ) -> tuple[str, str]:
        """A payment.* / order.paid event for `payment` (order.paid also carries the order)."""
        payload = {"payment": {"entity": dict(payment)}}
        if with_order or (with_order is None and event == "order.paid"):
            with self._lock:
                order = dict(self.orders.get(payment["order_id"]) or {
                    "id": payment["order_id"], "entity": "order", "amount": payment["amount"],
                    "currency": payment["currency"], "status": "paid"})
            payload["order"] = {"entity": order}
        return self.webhook(event, payload)

    # --- the API ----------------------------------------------------------------------------

    def _authorised(self, request: ReceivedRequest) -> bool:
        value = request.headers.get("Authorization", "")
        if not value.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(user, self.key_id) and hmac.compare_digest(
            password, self.key_secret)

    def _dispatch(self, request: ReceivedRequest) -> tuple[int, Any]:
        if not request.path.startswith("/v1/"):
            return rz_error(404, "The requested URL was not found on the server.")
        if not self._authorised(request):
            return rz_error(401, "Authentication failed")
        if self._delay:
            time.sleep(self._delay)
        if self._failure is not None:
            return rz_error(self._failure, self._failure_description)
        for i, (method, suffix, status, description) in enumerate(self._faults):
            if method == request.method and request.path.endswith(suffix):
                del self._faults[i]
                return rz_error(status, description)
        for i, (method, suffix) in enumerate(self._lost_answers):
            if method == request.method and request.path.endswith(suffix):
                del self._lost_answers[i]
                self._answer_api(request)
                return None  # done, and the answer lost on the way
        return self._answer_api(request)

    def _answer_api(self, request: ReceivedRequest) -> tuple[int, Any]:
        parts = request.path.strip("/").split("/")[1:]  # without "v1"
        body = request.json if isinstance(request.json, dict) else {}
        method = request.method
        if parts == ["orders"] and method == "POST":
            return self._create_order(body)
        if len(parts) >= 2 and parts[0] == "orders":
            order = self.orders.get(parts[1])
            if order is None:
                return rz_error(400, "The id provided does not exist")
            if len(parts) == 2 and method == "GET":
                return 200, order
            if parts[2:] == ["payments"] and method == "GET":
                items = [p for p in self.payments.values() if p["order_id"] == order["id"]]
                return 200, {"entity": "collection", "count": len(items), "items": items}
        if len(parts) >= 2 and parts[0] == "payments":
            payment = self.payments.get(parts[1])
            if payment is None:
                return rz_error(400, "The id provided does not exist")
            if len(parts) == 2 and method == "GET":
                return 200, payment
            if parts[2:] == ["capture"] and method == "POST":
                return self._capture(payment, body)
            if parts[2:] == ["refund"] and method == "POST":
                return self._refund(payment, body)
            if parts[2:] == ["refunds"] and method == "GET":
                items = [r for r in self.refunds.values() if r["payment_id"] == payment["id"]]
                return 200, {"entity": "collection", "count": len(items), "items": items}
        return rz_error(400, "The requested URL was not found on the server.")

    def _create_order(self, body: dict) -> tuple[int, Any]:
        amount, currency = body.get("amount"), body.get("currency")
        if not isinstance(amount, int) or amount < 100:
            return rz_error(400, "The amount must be atleast INR 1.00")
        if not isinstance(currency, str) or len(currency) != 3:
            return rz_error(400, "The currency field is invalid")
        order = self.create_order(amount, currency, body.get("receipt"), body.get("notes"))
        return 200, self.orders[order["id"]]

    def _capture(self, payment: dict, body: dict) -> tuple[int, Any]:
        if payment["status"] != "authorized":
            return rz_error(400, "This payment has already been captured"
                            if payment["status"] == "captured"
                            else "Only payments which have been authorized can be captured")
        if int(body.get("amount") or 0) != payment["amount"]:
            return rz_error(400, "Capture amount must be equal to the amount authorized")
        if body.get("currency") not in (None, payment["currency"]):
            return rz_error(400, "The currency does not match the payment's currency")
        payment["status"], payment["captured"] = "captured", True
        order = self.orders.get(payment["order_id"])
        if order is not None:
            self._mark_paid(order, payment)
        return 200, payment

    def _refund(self, payment: dict, body: dict) -> tuple[int, Any]:
        if payment["status"] not in ("captured", "refunded"):
            return rz_error(400, "The payment has not been captured")
        left = payment["amount"] - payment["amount_refunded"]
        amount = int(body.get("amount") or left)
        if amount <= 0 or amount > left:
            return rz_error(400, "The refund amount provided is greater than amount captured")
        refund = {"id": _rid("rfnd"), "entity": "refund", "amount": amount,
                  "currency": payment["currency"], "payment_id": payment["id"],
                  "notes": body.get("notes") or {}, "receipt": body.get("receipt"),
                  "acquirer_data": {"arn": None}, "created_at": int(time.time()),
                  "batch_id": None, "status": self.refund_status, "speed_processed": "normal",
                  "speed_requested": body.get("speed") or "normal"}
        self.refunds[refund["id"]] = refund
        payment["amount_refunded"] += amount
        payment["refund_status"] = "full" if payment["amount_refunded"] == payment["amount"] \
            else "partial"
        if payment["refund_status"] == "full":
            payment["status"] = "refunded"
        return 200, refund
