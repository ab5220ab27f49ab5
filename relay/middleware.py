"""The outer layer (only CORS, :mod:`relay.api.cors`, wraps it): request ids, access logs,
metrics and the one error shape."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable

import sqlalchemy.exc
import structlog
from aiohttp import web

from relay.errors import (
    APIError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from relay.logs import get_logger
from relay.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = get_logger("relay.http")
INTERNAL = "Something went wrong on our side. Quote the request id when you report it."
# Logged (and counted) for a request whose client left before it was answered (nginx's 499).
CLIENT_CLOSED = 499
UNREADABLE_BODY = "The request body could not be read as sent; check its Content-Encoding."


def _overloaded() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The relay is busy: every database connection is in use. Retry shortly.",
        code="overloaded",
        headers={"Retry-After": "1"},
    )


def _database_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The database connection was lost (a restart or failover). Retry shortly.",
        code="database_unavailable",
        headers={"Retry-After": "1"},
    )


def _error_response(err: APIError, request_id: str) -> web.Response:
    body = err.body()
    body["error"]["requestId"] = request_id
    headers = {**err.headers, "X-Request-Id": request_id}
    return web.Response(
        status=err.status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def _translate_http(exc: web.HTTPException) -> APIError:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("No such endpoint.")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowed(
            f"Method not allowed here; use {allowed}.", headers={"Allow": allowed}
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("The request body is larger than 1 MiB.")
    err = APIError(exc.reason or "HTTP error", code="http_error")
    err.status = exc.status
    return err


@web.middleware
async def request_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id", "")
    request_id = (
        incoming
        if 0 < len(incoming) <= 100 and incoming.isprintable()
        else ("req_" + secrets.token_hex(8))
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _error_response(_translate_http(exc), request_id)
        except APIError as err:
            response = _error_response(err, request_id)
        except web.RequestPayloadError:  # from read(): e.g. a body whose gzip is corrupt
            response = _error_response(BadRequest(UNREADABLE_BODY), request_id)
        except sqlalchemy.exc.TimeoutError:  # every pooled connection busy: shed, don't fail
            log.warning("overloaded", method=request.method, path=request.path)
            response = _error_response(_overloaded(), request_id)
        except sqlalchemy.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                log.exception("unhandled_error", method=request.method, path=request.path)
                response = _error_response(APIError(INTERNAL), request_id)
            else:  # the pool has dropped that connection and the ones opened with it
                log.warning("database_connection_lost", method=request.method, path=request.path)
                response = _error_response(_database_unavailable(), request_id)
        except asyncio.CancelledError:
            # The peer went away and aiohttp cancelled the handler (a media socket's caller
            # hanging up): nothing was answered, and it is no server error.
            status = CLIENT_CLOSED
            raise
        except Exception:
            log.exception("unhandled_error", method=request.method, path=request.path)
            response = _error_response(APIError(INTERNAL), request_id)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
            # The relay's own time for the request, as browsers' dev tools and benchmarks read
            # it: from here until the response is ready to write (W3C Server Timing).
            spent = (time.perf_counter() - started) * 1000
            response.headers["Server-Timing"] = f"relay;dur={spent:.3f}"
        return response
    finally:
        elapsed = time.perf_counter() - started
        HTTP_REQUESTS.labels(request.method, route_name, str(status)).inc()
        HTTP_LATENCY.labels(request.method, route_name).observe(elapsed)
        log.info(
            "http_request",
            method=request.method,
            path=request.path,
            status=status,
            ms=round(elapsed * 1000, 2),
        )
