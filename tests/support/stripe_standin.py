"""A Stripe stand-in for tests that drive the REAL `stripe` SDK over HTTP: localstripe's own
aiohttp app (`localstripe.server.app`, with its real PaymentIntents, PaymentMethods, Charges and
Refunds), served on 127.0.0.1:<free port> (aiohttp AppRunner + TCPSite) by an asyncio loop in a
background thread, plus test-only Checkout Session routes, which localstripe does not have:

- `POST /v1/checkout/sessions`: form-encoded as the SDK sends it (nested keys such as
  `line_items[0][price_data][unit_amount]` are unflattened by localstripe's own parser); payment
  mode with inline `price_data` only (localstripe has no Prices). Honours `Idempotency-Key`: the
  same key with the same parameters returns the first answer again, with other parameters it is
  a 400, as at Stripe. `expires_at` is honoured (30 min to 24 h, default 24 h); an open session
  past it reads as expired. Every request is kept in `checkout_requests`.
- `GET /v1/checkout/sessions/<id>` and `POST /v1/checkout/sessions/<id>/expire`.
- `POST /pay/<id>` (test-only, behind the secret key): the "hosted page" completing a session
  with a PaymentIntent that must exist in localstripe's store, have succeeded and match the
  session's amount and currency (`/pay/<id>/delayed`: with one not yet confirmed).
- `fail_next(method, path, status, message)`: the next such request gets a Stripe error.

State: localstripe keeps everything in one module-level `Store` and pickles it to the fixed
file /tmp/localstripe.pickle on every write (and reloads it at start unless --from-scratch). Here
the store is emptied at `start()` (what --from-scratch amounts to: `try_load_from_disk` is never
called) and its `dump_to_disk` is replaced on the instance by a no-op, so these tests neither
read nor write the shared pickle. Since that store is process-wide, only one stand-in runs at a
time in a process; and since localstripe's app binds to the first loop that runs it, one loop
thread serves every stand-in of the process.

Refunds: localstripe's `POST /v1/refunds` takes `payment_intent` itself (it refunds the intent's
latest charge), so the application's refund call needs no adapter.

Helpers (test thread): `pay(session_id)` creates and confirms a real PaymentIntent with the
`pm_card_visa` test method through the SDK, then completes the session; `complete_unpaid()` /
`finish_delayed()` model a delayed method (a real unconfirmed intent, later confirmed or
cancelled); `expire()`; `down()` stops listening for a while (a gateway outage). `stripe_event()`
and `signature_header()` build webhook deliveries as Stripe signs them.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from typing import Any

import stripe
from aiohttp import web

with warnings.catch_warnings():
    # localstripe registers plain (non-async) handlers, which aiohttp 3.14 deprecates.
    warnings.filterwarnings("ignore", "Bare functions are deprecated", DeprecationWarning)
    from localstripe import resources as ls_resources
    from localstripe import server as ls_server
    from localstripe import webhooks as ls_webhooks
    from localstripe.errors import UserError

SECRET_KEY = "sk_test_standin"
CARD_OK = "pm_card_visa"

_active: "StripeStandIn | None" = None
_active_lock = threading.Lock()
_routes_installed = False


# --- localstripe's state ----------------------------------------------------------------------

def _no_disk() -> None:
    """localstripe's Store.dump_to_disk, disabled: nothing goes to /tmp/localstripe.pickle."""


def _fresh_store() -> None:
    store = ls_resources.store
    # An instance attribute shadows Store.dump_to_disk for both callers: Store.__setitem__ /
    # __delitem__ (self.dump_to_disk()) and the app's save_store_middleware.
    store.dump_to_disk = _no_disk
    store.clear()  # dict.clear: neither loads nor dumps
    ls_webhooks._webhooks.clear()


_loop: asyncio.AbstractEventLoop | None = None


def _shared_loop() -> asyncio.AbstractEventLoop:
    """One asyncio loop in one daemon thread for the whole process: localstripe's app is a
    module-level aiohttp Application, which binds to the first loop that runs it."""
    global _loop
    with _active_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="stripe-standin",
                             daemon=True).start()
        return _loop


def _standin() -> "StripeStandIn":
    standin = _active
    if standin is None:
        raise UserError(503, "No Stripe stand-in is running")
    return standin


# --- the added routes -------------------------------------------------------------------------

async def _create_session(request: web.Request) -> web.Response:
    return await _standin()._create_session(request)


async def _retrieve_session(request: web.Request) -> web.Response:
    return _standin()._retrieve_session(request.match_info["id"])


async def _expire_session(request: web.Request) -> web.Response:
    return _standin()._expire_session(request.match_info["id"])


async def _pay_session(request: web.Request) -> web.Response:
    return await _standin()._pay_session(request)


async def _complete_unpaid(request: web.Request) -> web.Response:
    return await _standin()._complete_unpaid_route(request)


@web.middleware
async def _faults(request: web.Request, handler):
    """Answers a request with the error queued by `fail_next` for its method and path."""
    standin = _active
    fault = standin._take_fault(request.method, request.path) if standin is not None else None
    if fault is not None:
        status, message, code = fault
        raise UserError(status, message, {"code": code} if code else None)
    return await handler(request)


def _install_routes(app: web.Application) -> None:
    """Once per process: an aiohttp app's router and middlewares freeze when it first starts."""
    global _routes_installed
    if _routes_installed:
        return
    app.middlewares.append(_faults)  # innermost: after localstripe's error and auth handling
    app.router.add_post("/v1/checkout/sessions", _create_session)
    app.router.add_get("/v1/checkout/sessions/{id}", _retrieve_session)
    app.router.add_post("/v1/checkout/sessions/{id}/expire", _expire_session)
    app.router.add_post("/pay/{id}", _pay_session)
    app.router.add_post("/pay/{id}/delayed", _complete_unpaid)
    _routes_installed = True


def _json(body: Any, status: int = 200) -> web.Response:
    return ls_server.json_response(body, status=status)


def _int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(400, f"Invalid integer: {name}", {"param": name})
    return number


@dataclass
class CheckoutRequest:
    """One POST /v1/checkout/sessions as the stand-in received it."""

    headers: dict[str, str]
    params: dict[str, Any]  # unflattened: {"line_items": [{"price_data": {...}}], ...}
    form: list[tuple[str, str]]  # the raw form fields, in order

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("Idempotency-Key")


class StripeStandIn:
    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.sessions: dict[str, dict] = {}
        self.checkout_requests: list[CheckoutRequest] = []
        self._idempotent: dict[str, tuple[dict, dict]] = {}  # key -> (params, first answer)
        self._faults: list[tuple[str, str, tuple[int, str, str | None]]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # --- life cycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.port is not None, "not started"
        return f"http://{self.host}:{self.port}"

    def start(self) -> "StripeStandIn":
        global _active
        with _active_lock:
            if _active is not None:
                raise RuntimeError("a Stripe stand-in is already running in this process "
                                   "(localstripe's store is process-wide)")
            _active = self
        try:
            _fresh_store()
            _install_routes(ls_server.app)
            self._loop = _shared_loop()
            self._call(self._setup())
        except BaseException:
            self.stop()
            raise
        return self

    async def _setup(self) -> None:
        self._runner = web.AppRunner(ls_server.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self._listen(self.port or 0)

    async def _listen(self, port: int) -> None:
        self._site = web.TCPSite(self._runner, self.host, port)
        await self._site.start()
        self.port = self._runner.addresses[0][1]

    async def _unlisten(self) -> None:
        """Close the listening socket and every open (keep-alive) connection."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server if self._runner is not None else None
        for connection in list(server.connections if server is not None else ()):
            connection.force_close()

    def _call(self, coro, timeout: float = 15):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @contextlib.contextmanager
    def down(self):
        """Inside the block the stand-in is unreachable (connections refused, open ones
        closed); afterwards it listens again on the same port with the same state."""
        self._call(self._unlisten())
        try:
            yield self
        finally:
            self._call(self._listen(self.port))

    def stop(self) -> None:
        global _active
        if self._loop is not None and self._runner is not None:
            async def shutdown() -> None:
                await self._unlisten()
                await self._runner.cleanup()
                # localstripe schedules its own webhook deliveries (sleep 1 s, then POST to
                # registered URLs, of which there are none): drop whatever is left.
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            self._call(shutdown())
        self._loop = self._runner = self._site = None
        with _active_lock:
            if _active is self:
                _active = None

    def __enter__(self) -> "StripeStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- route bodies (run on the stand-in's loop) ----------------------------------------------

    async def _create_session(self, request: web.Request) -> web.Response:
        form = await request.post()
        params = await ls_server.get_post_data(request) or {}
        params = dict(params)
        params.pop("expand", None)
        key = request.headers.get("Idempotency-Key")
        with self._lock:
            self.checkout_requests.append(CheckoutRequest(
                headers=dict(request.headers), params=copy.deepcopy(params),
                form=[(k, str(v)) for k, v in form.items()]))
            if key is not None and key in self._idempotent:
                first_params, answer = self._idempotent[key]
                if first_params != params:
                    raise UserError(400, "Keys for idempotent requests can only be used with "
                                         "the same parameters they were first used with.")
                return _json(copy.deepcopy(answer))
            session = self._new_session(params)
            self.sessions[session["id"]] = session
            answer = self._public(session)
            if key is not None:
                self._idempotent[key] = (copy.deepcopy(params), copy.deepcopy(answer))
            return _json(answer)

    def _new_session(self, params: dict) -> dict:
        mode = params.get("mode")
        if mode != "payment":
            raise UserError(400, "This stand-in supports mode=payment only", {"param": "mode"})
        items = params.get("line_items")
        if not isinstance(items, list) or not items:
            raise UserError(400, "Missing required param: line_items.", {"param": "line_items"})
        total, currencies, line_items = 0, set(), []
        for i, item in enumerate(items):
            price_data = item.get("price_data") if isinstance(item, dict) else None
            if not isinstance(price_data, dict):
                raise UserError(400, "line_items need price_data (the stand-in has no Prices)",
                                {"param": f"line_items[{i}][price_data]"})
            quantity = _int(item.get("quantity", 1), f"line_items[{i}][quantity]")
            unit_amount = _int(price_data.get("unit_amount"),
                               f"line_items[{i}][price_data][unit_amount]")
            currency = str(price_data.get("currency") or "").lower()
            name = (price_data.get("product_data") or {}).get("name")
            if quantity < 1 or unit_amount < 0 or not currency or not name:
                raise UserError(400, "Invalid line item", {"param": f"line_items[{i}]"})
            currencies.add(currency)
            total += quantity * unit_amount
            line_items.append({"quantity": quantity, "currency": currency,
                               "unit_amount": unit_amount, "description": name,
                               "amount_total": quantity * unit_amount})
        if len(currencies) != 1:
            raise UserError(400, "All line items must share one currency")
        for name in ("success_url", "cancel_url"):
            if not params.get(name):
                raise UserError(400, f"Missing required param: {name}.", {"param": name})
        now = int(time.time())
        expires_at = now + 24 * 3600
        if params.get("expires_at") is not None:  # Stripe: 30 minutes to 24 hours from now
            expires_at = _int(params["expires_at"], "expires_at")
            if not now + 30 * 60 - 5 <= expires_at <= now + 24 * 3600 + 5:
                raise UserError(400, "expires_at must be 30 minutes to 24 hours from now",
                                {"param": "expires_at"})
        session_id = "cs_test_" + secrets.token_hex(16)
        return {
            "id": session_id,
            "object": "checkout.session",
            "url": f"{self.url}/pay/{session_id}",
            "mode": "payment",
            "status": "open",
            "payment_status": "unpaid",
            "amount_subtotal": total,
            "amount_total": total,
            "currency": currencies.pop(),
            "metadata": dict(params.get("metadata") or {}),
            "client_reference_id": params.get("client_reference_id"),
            "customer_email": params.get("customer_email"),
            "success_url": str(params["success_url"]).replace("{CHECKOUT_SESSION_ID}",
                                                              session_id),
            "cancel_url": params["cancel_url"],
            "payment_intent": None,
            "created": now,
            "expires_at": expires_at,
            "livemode": False,
            "_line_items": line_items,
        }

    def _get(self, session_id: str) -> dict:
        session = self.sessions.get(session_id)
        if session is None:
            raise UserError(404, f"No such checkout.session: '{session_id}'",
                            {"code": "resource_missing", "param": "id"})
        if session["status"] == "open" and time.time() >= session["expires_at"]:
            session["status"] = "expired"  # Stripe expires an open session at expires_at
        return session

    @staticmethod
    def _public(session: dict) -> dict:
        return {k: copy.deepcopy(v) for k, v in session.items() if not k.startswith("_")}

    def _retrieve_session(self, session_id: str) -> web.Response:
        with self._lock:
            return _json(self._public(self._get(session_id)))

    def _expire_session(self, session_id: str) -> web.Response:
        with self._lock:
            session = self._get(session_id)
            if session["status"] != "open":
                raise UserError(400, f"Only Checkout Sessions with a status of open can be "
                                     f"expired. This session has a status of "
                                     f"{session['status']}.")
            session["status"] = "expired"
            return _json(self._public(session))

    def _intent(self, intent_id: str, session: dict, *, statuses: tuple[str, ...]):
        intent = ls_resources.PaymentIntent._api_retrieve(intent_id)  # 404 if not real
        if intent.amount != session["amount_total"] or \
                intent.currency.lower() != session["currency"]:
            raise UserError(400, "The PaymentIntent does not match the session's amount")
        if intent.status not in statuses:
            raise UserError(400, f"The PaymentIntent is {intent.status}")
        return intent

    async def _pay_session(self, request: web.Request) -> web.Response:
        data = await ls_server.get_post_data(request) or {}
        with self._lock:
            session = self._get(request.match_info["id"])
            intent_id = str(data.get("payment_intent") or session.get("payment_intent") or "")
            if session["status"] == "expired":
                raise UserError(400, "This Checkout Session has expired")
            if session["payment_status"] == "paid":
                raise UserError(400, "This Checkout Session is already paid")
            self._intent(intent_id, session, statuses=("succeeded",))
            session.update(status="complete", payment_status="paid", payment_intent=intent_id)
            return _json(self._public(session))

    async def _complete_unpaid_route(self, request: web.Request) -> web.Response:
        data = await ls_server.get_post_data(request) or {}
        with self._lock:
            session = self._get(request.match_info["id"])
            if session["status"] != "open":
                raise UserError(400, f"This Checkout Session is {session['status']}")
            intent_id = str(data.get("payment_intent") or "")
            self._intent(intent_id, session, statuses=("requires_confirmation",))
            session.update(status="complete", payment_status="unpaid", payment_intent=intent_id)
            return _json(self._public(session))

    # --- helpers for tests (test thread, over HTTP) ---------------------------------------------

    def fail_next(self, method: str, path: str, status: int, message: str,
                  code: str | None = None) -> None:
        """The next `method path` request is answered with a Stripe error (status, message,
        code) instead, e.g. fail_next("POST", "/v1/refunds", 400, "...")."""
        with self._lock:
            self._faults.append((method.upper(), path, (status, message, code)))

    def reset(self) -> None:
        """Forget every object, session, idempotency key and queued fault (between the runs
        of a Hypothesis state machine: Hypothesis seeds the global `random` each run, and
        localstripe draws its ids from it, so a new run would make the ids of the last one
        again)."""
        with self._lock:
            _fresh_store()
            self.sessions.clear()
            self.checkout_requests.clear()
            self._idempotent.clear()
            self._faults.clear()

    def clear_faults(self) -> None:
        """Drop the faults queued by fail_next that no request has taken."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str):
        with self._lock:
            for i, (m, p, fault) in enumerate(self._faults):
                if m == method and p == path:
                    del self._faults[i]
                    return fault
        return None

    def forget_idempotency_keys(self) -> None:
        """Stripe remembers an idempotency key for 24 hours per account. Tests that empty the
        database between them restart payment ids (and so keys such as lms-payment-1): call
        this when the database is emptied, as if each test had a Stripe account of its own."""
        with self._lock:
            self._idempotent.clear()

    def client(self) -> stripe.StripeClient:
        """The real SDK pointed at the stand-in (as a Stripe dashboard user would act)."""
        return stripe.StripeClient(SECRET_KEY, base_addresses={"api": self.url})

    def session(self, session_id: str) -> dict:
        with self._lock:
            return self._public(self._get(session_id))

    def _raw(self, method: str, path: str, params: dict | None = None) -> dict:
        body = urllib.parse.urlencode(params or {}).encode() if method == "POST" else None
        request = urllib.request.Request(
            self.url + path, data=body, method=method,
            headers={"Authorization": f"Bearer {SECRET_KEY}",
                     "Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"stand-in {method} {path}: {exc.code} {exc.read()!r}")

    def pay(self, session_id: str) -> dict:
        """Pay the session by card: a real localstripe PaymentIntent, created and confirmed with
        the `pm_card_visa` test method, then the session completed with it. Returns the
        session (status complete, payment_status paid, payment_intent set)."""
        session = self.session(session_id)
        intent = self.client().v1.payment_intents.create(params={
            "amount": session["amount_total"], "currency": session["currency"],
            "payment_method": CARD_OK, "confirm": True,
            "metadata": {"checkout_session": session_id}})
        assert intent.status == "succeeded", intent
        return self._raw("POST", f"/pay/{session_id}", {"payment_intent": intent.id})

    def complete_unpaid(self, session_id: str) -> dict:
        """A delayed payment method: the session completes with payment_status "unpaid" and a
        real intent that is not confirmed yet (see finish_delayed)."""
        session = self.session(session_id)
        intent = self.client().v1.payment_intents.create(params={
            "amount": session["amount_total"], "currency": session["currency"],
            "payment_method": CARD_OK, "metadata": {"checkout_session": session_id}})
        assert intent.status == "requires_confirmation", intent
        return self._raw("POST", f"/pay/{session_id}/delayed", {"payment_intent": intent.id})

    def finish_delayed(self, session_id: str, *, succeed: bool) -> dict:
        """The delayed payment's outcome: the intent is confirmed (the session becomes paid) or
        cancelled (the session stays unpaid). Returns the session."""
        intent_id = self.session(session_id)["payment_intent"]
        if succeed:
            intent = self.client().v1.payment_intents.confirm(intent_id)
            assert intent.status == "succeeded", intent
            return self._raw("POST", f"/pay/{session_id}", {"payment_intent": intent_id})
        intent = self.client().v1.payment_intents.cancel(intent_id)
        assert intent.status == "canceled", intent
        return self.session(session_id)

    def expire(self, session_id: str) -> dict:
        return self._raw("POST", f"/v1/checkout/sessions/{session_id}/expire")

    def refunds_for(self, payment_intent: str) -> list[dict]:
        refunds = self.client().v1.refunds.list(params={"payment_intent": payment_intent})
        return [r.to_dict() for r in refunds.data]

    def refunds_by_intent(self) -> dict[str, list[dict]]:
        """Every refund localstripe holds, by the payment intent it refunds, read from its
        store in this process (cheap enough to call after every step of a state machine;
        call it while no request is in flight)."""
        found: dict[str, list[dict]] = {}
        for key, obj in list(ls_resources.store.items()):
            if not key.startswith("refund:"):
                continue
            charge = ls_resources.store.get(f"charge:{obj.charge}")
            intent = obj.payment_intent or (charge.payment_intent if charge else None)
            found.setdefault(intent, []).append({
                "id": obj.id, "amount": obj.amount, "status": obj.status,
                "payment_intent": intent, "metadata": dict(obj.metadata or {})})
        return found

    def charge_of(self, payment_intent: str) -> dict:
        intent = self.client().v1.payment_intents.retrieve(payment_intent)
        charge_id = intent.latest_charge if isinstance(intent.latest_charge, str) \
            else intent.latest_charge["id"]
        return self.client().v1.charges.retrieve(charge_id).to_dict()


def stripe_standin() -> StripeStandIn:
    """A started stand-in (call `.stop()`, or use it in a `with` block)."""
    return StripeStandIn().start()


# --- webhook deliveries -------------------------------------------------------------------------

def stripe_event(event_type: str, obj: dict, *, event_id: str | None = None,
                 created: int | None = None) -> dict:
    """An event as Stripe delivers it (a snapshot of `obj`)."""
    return {
        "id": event_id or "evt_" + secrets.token_hex(12),
        "object": "event",
        "api_version": stripe.api_version,
        "created": created or int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {"object": copy.deepcopy(obj)},
    }


def signature_header(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """`Stripe-Signature` for the exact body: t=<timestamp>,v1=<HMAC-SHA256 of "t.body">."""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8")
    return stripe.WebhookSignature.generate_signature_header(payload, secret,
                                                             timestamp=timestamp)
