"""The API's error types. Raise one anywhere (a service, a route, a hook); the handler in
utils/middleware.py turns it into the one error shape:
    {"error": "<human message>", "code": "<machine_code>", "details": {...}}
"""
from __future__ import annotations

from typing import Any


class APIError(Exception):
    status_code = 400
    code = "bad_request"
    message = "Bad request"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message or self.message)
        self.message = message or self.message
        if code:
            self.code = code
        self.details = details
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(APIError):
    status_code, code, message = 400, "bad_request", "Bad request"


class Unauthorized(APIError):
    status_code, code, message = 401, "unauthorized", "Authentication required"


class PaymentRequired(APIError):
    status_code, code, message = 402, "payment_required", "Payment required"


class Forbidden(APIError):
    status_code, code, message = 403, "forbidden", "You are not allowed to do this"


class NotFound(APIError):
    status_code, code, message = 404, "not_found", "Not found"


class Conflict(APIError):
    status_code, code, message = 409, "conflict", "Conflict"


class Gone(APIError):
    status_code, code, message = 410, "gone", "No longer available"


class PayloadTooLarge(APIError):
    status_code, code, message = 413, "payload_too_large", "Upload too large"


class UnsupportedMediaType(APIError):
    status_code, code, message = 415, "unsupported_media_type", "Unsupported media type"


class ValidationError(APIError):
    status_code, code, message = 422, "validation_error", "Invalid input"


class Locked(APIError):
    status_code, code, message = 423, "account_locked", "Account locked"


class TooManyRequests(APIError):
    status_code, code, message = 429, "rate_limited", "Too many requests"


class BadGateway(APIError):
    status_code, code, message = 502, "gateway_error", "The payment gateway refused the request"


class ServiceUnavailable(APIError):
    status_code, code, message = 503, "service_unavailable", "Service unavailable"
