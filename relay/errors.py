"""Errors a client of the API can cause, each with an HTTP status and a stable code.

APIError                      any error answered as {"error": {...}}
├── BadRequest        400     malformed_json, invalid_json, invalid_request
├── Unauthorized      401     unauthorized
├── Forbidden         403     forbidden, publishable_key_not_allowed, key_scope_violation,
│                             origin_not_allowed, destination_not_allowed, ...
├── NotFound          404     not_found
├── MethodNotAllowed  405     method_not_allowed
├── Conflict          409     conflict, phone_number_taken, ...
├── PayloadTooLarge   413     payload_too_large
├── UnsupportedMedia  415     unsupported_media_type
├── ValidationFailed  422     validation_error, invalid_text, metadata_too_large, ...
├── RateLimited       429     rate_limited (carries Retry-After)
└── ServiceUnavailable 503    unavailable
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.details:
            error["details"] = self.details
        return {"error": error}


class BadRequest(APIError):
    status = 400
    code = "invalid_request"


# RFC 9110 (11.6.1): a 401 names the scheme that would work; RFC 6750 adds why a key failed.
WWW_AUTHENTICATE = 'Bearer realm="conversation-relay"'


class Unauthorized(APIError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        bad_key = ', error="invalid_token"' if self.code == "invalid_api_key" else ""
        self.headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE + bad_key)


class Forbidden(APIError):
    status = 403
    code = "forbidden"


class NotFound(APIError):
    status = 404
    code = "not_found"


class MethodNotAllowed(APIError):
    status = 405
    code = "method_not_allowed"


class Conflict(APIError):
    status = 409
    code = "conflict"


class PayloadTooLarge(APIError):
    status = 413
    code = "payload_too_large"


class UnsupportedMedia(APIError):
    status = 415
    code = "unsupported_media_type"


class ValidationFailed(APIError):
    status = 422
    code = "validation_error"


class RateLimited(APIError):
    status = 429
    code = "rate_limited"


class ServiceUnavailable(APIError):
    status = 503
    code = "unavailable"


def invalid_field(field: str, message: str, code: str = "validation_error") -> ValidationFailed:
    """One offending field, in the same shape as a multi-field validation failure."""
    return ValidationFailed(
        message,
        code=code,
        field=field,
        details=[{"field": field, "code": code, "message": message}],
    )
