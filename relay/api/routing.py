"""Declared endpoints: one table drives the aiohttp routes AND the OpenAPI document.

A handler is ``async def handler(ctx: Context, body: SomeModel) -> OutModel``; the
declaration says which models, which auth, which status. Parsing, auth, rate limits and
serialisation happen here, once, so every endpoint answers errors the same way.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ValidationError

from relay.api import idempotency
from relay.api.cors import is_public, require_origin
from relay.api.limits import FIELD_CODES, parse_body, refuse_bad_text
from relay.api.schema import OutModel
from relay.auth import AuthKey, authenticate
from relay.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMedia,
    ValidationFailed,
)
from relay.state import APP_STATE, AppState

Auth = Literal["secret", "any", "none"]
NOT_AN_OBJECT = "The request body must be a JSON object."
JSON_REQUIRED = "Send the body as application/json."
NO_SUCH_OBJECT = "No such object in this project."


@dataclass(slots=True)
class Context:
    request: web.Request
    state: AppState
    key: AuthKey | None

    @property
    def project_id(self) -> str:
        assert self.key is not None
        return self.key.project_id

    def path(self, name: str) -> str:
        return self.request.match_info[name]


Handler = Callable[..., Awaitable[Any]]


@dataclass(slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    auth: Auth
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: Any
    status: int
    errors: tuple[int, ...]
    description: str = ""
    also: tuple[int, ...] = ()  # further success statuses the handler may answer with
    body_optional: bool = False  # no body at all is fine too (the handler gets None)
    media_type: str | None = None  # a non-JSON success response (the handler streams it)

    @property
    def idempotent(self) -> bool:
        """Honours ``Idempotency-Key``: every POST of the REST API (not carriers' hooks)."""
        return self.method == "POST" and self.path.startswith("/v1/") and self.auth != "none"


@dataclass
class Router:
    endpoints: list[Endpoint] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        auth: Auth = "secret",
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: Any = None,
        status: int = 200,
        errors: tuple[int, ...] = (),
        also: tuple[int, ...] = (),
        body_optional: bool = False,
        media_type: str | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    method,
                    path,
                    fn,
                    summary,
                    tag,
                    auth,
                    body,
                    query,
                    response,
                    status,
                    errors,
                    description=(fn.__doc__ or "").strip(),
                    also=also,
                    body_optional=body_optional,
                    media_type=media_type,
                )
            )
            return fn

        return register

    def install(self, app: web.Application) -> None:
        for ep in self.endpoints:
            app.router.add_route(ep.method, ep.path, _aiohttp_handler(ep))


def validation_error(exc: ValidationError, *, prefix: str = "") -> ValidationFailed:
    details = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        details.append(
            {
                "field": prefix + loc if loc else prefix.rstrip(".") or None,
                "code": err["type"],
                "message": err["msg"],
            }
        )
    fields = [d["field"] for d in details if d["field"]]
    message = "Invalid " + (", ".join(dict.fromkeys(fields)) if fields else "request") + "."
    codes = {d["code"] for d in details}
    code = codes.pop() if len(codes) == 1 and codes <= FIELD_CODES else None
    return ValidationFailed(
        message, code=code, field=fields[0] if fields else None, details=details
    )


async def read_json(request: web.Request) -> Any:
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMedia(JSON_REQUIRED)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge("The request body is larger than 1 MiB.") from exc
    return parse_body(raw)


def _parse_query(model: type[BaseModel], request: web.Request) -> BaseModel:
    raw: dict[str, Any] = {}
    for name in request.query:
        values = request.query.getall(name)
        for value in values:
            refuse_bad_text(name, value)
        raw[name] = values if len(values) > 1 else values[0]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def _aiohttp_handler(ep: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    public = is_public(ep.method, ep.path)

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[APP_STATE]
        key = await authenticate(request, state, ep.auth) if ep.auth != "none" else None
        if key is not None and public:
            require_origin(request, state.settings, key)
        if any("\x00" in value for value in request.match_info.values()):
            raise NotFound(NO_SUCH_OBJECT)  # no id holds one, and PostgreSQL refuses to look
        ctx = Context(request, state, key)
        data: Any = None
        if ep.body is not None and not (ep.body_optional and not request.body_exists):
            data = await read_json(request)
            if not isinstance(data, dict):
                raise BadRequest(NOT_AN_OBJECT)  # well-formed JSON: invalid_request
        claim = None
        raw_key = request.headers.get(idempotency.HEADER)
        if ep.idempotent and raw_key is not None:
            claimed = await idempotency.claim(
                state.db, ctx.project_id, raw_key, ep.method, request.path, data
            )
            if isinstance(claimed, web.Response):
                return claimed  # the first answer, replayed
            claim = claimed
        try:
            response = await _respond(ep, ctx, request, data)
        except BaseException:
            if claim is not None:
                await claim.forget()
            raise
        if claim is not None:
            await claim.keep(response)
        return response

    handle.__name__ = ep.handler.__name__
    return handle


async def _respond(
    ep: Endpoint, ctx: Context, request: web.Request, data: Any
) -> web.StreamResponse:
    kwargs: dict[str, Any] = {}
    if ep.body is not None:
        try:
            kwargs["body"] = None if data is None else ep.body.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from exc
    if ep.query is not None:
        kwargs["query"] = _parse_query(ep.query, request)
    result = await ep.handler(ctx, **kwargs)
    if isinstance(result, web.StreamResponse):
        return result
    if result is None:
        return web.Response(status=ep.status)
    payload = (
        result.model_dump(mode="json", by_alias=True)
        if isinstance(result, OutModel | BaseModel)
        else result
    )
    return web.json_response(payload, status=ep.status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
