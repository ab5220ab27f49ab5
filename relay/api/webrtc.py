"""WHIP (RFC 9725) for web calls: the page's SDP offer in, the relay peer's answer out.

    OPTIONS /media/webrtc              CORS preflight
    POST    /media/webrtc              application/sdp offer -> 201 answer + Location
    DELETE  /media/webrtc/{callId}     hang up (the Location of the session)

Both are authenticated by the web call's token (``Authorization: Bearer TOKEN``, from
``POST /v1/calls``), never by a cookie, so they answer CORS for any origin: a page on
another origin can do nothing here without a token, and the token already names one call.
The offer uses the token once: it moves the call ``connecting -> in_progress``, and a
second offer with it is refused (``409 call_token_used``). The DELETE may use it after its
five minutes are up, for the call it names only.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from relay import tokens
from relay.api.openapi import WWW_AUTHENTICATE
from relay.calls import commands, inbound, media
from relay.calls.inbound import WEB_TOKEN_PURPOSE
from relay.calls.media import MEDIA
from relay.errors import APIError, BadRequest, Conflict, NotFound, Unauthorized, UnsupportedMedia
from relay.state import APP_STATE
from relay.transports import webrtc_protocol as wp
from relay.transports.webrtc import WebrtcPeer

PATH = "/media/webrtc"
MISSING_TOKEN = "Send the web call's token as 'Authorization: Bearer TOKEN'."
BAD_TOKEN = "The web call token is not valid."
EXPIRED_TOKEN = "The web call token has expired (5 minutes); create the call again."
TOKEN_USED = "This web call's token was already used: the call is {status}."
NOT_SDP = "Send the SDP offer as application/sdp."
NO_SESSION = "No live web call session here."
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location",
}
PREFLIGHT = {
    **CORS,
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
_SDP = {wp.SDP_CONTENT_TYPE: {"schema": {"type": "string"}}}
_TOKEN: list[dict[str, list[str]]] = [{"callToken": []}]


def _errors(*codes: tuple[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        str(status): {"description": text, "content": _ERROR} for status, text in codes
    }
    if "401" in out:
        out["401"]["headers"] = {"WWW-Authenticate": WWW_AUTHENTICATE}
    return out


# The WHIP routes in the OpenAPI document (their bodies are SDP, not the JSON routes' models).
OPENAPI_PATHS: dict[str, Any] = {
    PATH: {
        "post": {
            "operationId": "join_web_call",
            "summary": "Join a web call: WHIP offer in, answer out (RFC 9725)",
            "tags": ["Calls"],
            "description": "The page's SDP offer (ICE gathered, an Opus audio section, an "
            "optional `relay` data channel for live events), with the token of "
            "`POST /v1/calls` (`connectionType: webrtc`). Uses the token once. Any origin "
            "may call it (CORS `*`, no cookies).",
            "security": _TOKEN,
            "requestBody": {"required": True, "content": _SDP},
            "responses": {
                "201": {
                    "description": "The relay's SDP answer; `Location` hangs up the call",
                    "headers": {"Location": {"schema": {"type": "string"}}},
                    "content": _SDP,
                },
                **_errors(
                    (400, "Not an SDP offer (`invalid_sdp`), or no Opus audio (`no_audio`)"),
                    (401, "Token missing, invalid or expired (`call_token_expired`)"),
                    (409, "The token was used already (`call_token_used`)"),
                    (413, "Body larger than 1 MiB"),
                    (415, "Body is not application/sdp"),
                ),
            },
        }
    },
    PATH + "/{call_id}": {
        "delete": {
            "operationId": "leave_web_call",
            "summary": "Hang up a web call (the WHIP session's DELETE)",
            "tags": ["Calls"],
            "security": _TOKEN,
            "parameters": [
                {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "The call ends `completed`"},
                **_errors(
                    (401, "Token missing or invalid"),
                    (404, "No live session of this call on any node"),
                ),
            },
        }
    },
}

PEERS: web.AppKey[dict[str, WebrtcPeer]] = web.AppKey("relay_webrtc_peers", dict)


def install(app: web.Application) -> None:
    app[PEERS] = {}
    app.router.add_route("OPTIONS", PATH, preflight)
    app.router.add_post(PATH, offer)
    app.router.add_route("OPTIONS", PATH + "/{call_id}", preflight)
    app.router.add_delete(PATH + "/{call_id}", hang_up)


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=PREFLIGHT)


def _call_of(request: web.Request, *, expired_ok: bool = False) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(MISSING_TOKEN, code="missing_call_token")
    key = request.app[APP_STATE].signing_key
    try:
        # The hang-up of a call that is running may come after the token's five minutes.
        return tokens.verify(key, token.strip(), WEB_TOKEN_PURPOSE, now=0 if expired_ok else None)
    except tokens.TokenExpired as exc:
        raise Unauthorized(EXPIRED_TOKEN, code="call_token_expired") from exc
    except tokens.TokenError as exc:
        raise Unauthorized(BAD_TOKEN, code="invalid_call_token") from exc


async def _with_cors(work: Awaitable[web.Response]) -> web.Response:
    try:
        response = await work
    except APIError as err:  # the middleware answers it; the page must be able to read it
        err.headers.update(CORS)
        raise
    response.headers.update(CORS)
    return response


async def offer(request: web.Request) -> web.Response:
    """The page's offer: answered with the relay peer's SDP; the call runs from here."""
    return await _with_cors(_offer(request))


async def _offer(request: web.Request) -> web.Response:
    call_id = _call_of(request)
    state = request.app[APP_STATE]
    call = await inbound.load_call(state.db, call_id)
    if call is None or call.connection_type != "webrtc":
        raise Unauthorized(BAD_TOKEN, code="invalid_call_token")
    if call.status not in inbound.AWAITING_MEDIA:
        raise Conflict(TOKEN_USED.format(status=call.status), code="call_token_used")
    if request.content_type != wp.SDP_CONTENT_TYPE:
        raise UnsupportedMedia(NOT_SDP)
    try:
        sdp = wp.parse_offer(await request.read())
    except wp.SdpRefused as exc:
        raise BadRequest(exc.message, code=exc.code) from exc
    runtime = request.app[MEDIA]
    peer = WebrtcPeer(state.settings.webrtc_ice_servers)
    try:
        answer = await peer.answer(sdp)
    except wp.SdpRefused as exc:
        raise BadRequest(exc.message, code=exc.code) from exc
    deps = runtime.deps()
    try:
        run = await media.begin(deps, peer, call_id)
    except inbound.CallUnavailable as exc:  # another offer with this token got there first
        await peer.close()
        raise Conflict(TOKEN_USED.format(status="already started"), code="call_token_used") from exc
    peers = request.app[PEERS]
    peers[call_id] = peer

    async def running() -> None:
        try:
            await run
        finally:
            peers.pop(call_id, None)

    runtime.detach(running(), call_id)
    return web.Response(
        status=201,
        text=answer,
        content_type=wp.SDP_CONTENT_TYPE,
        headers={"Location": f"{PATH}/{call_id}"},
    )


async def hang_up(request: web.Request) -> web.Response:
    """The page hangs up (WHIP's DELETE of the session): the call ends ``completed``."""
    return await _with_cors(_hang_up(request))


async def _hang_up(request: web.Request) -> web.Response:
    call_id = _call_of(request, expired_ok=True)
    peer = request.app[PEERS].get(call_id)
    if call_id != request.match_info["call_id"]:
        raise NotFound(NO_SESSION)
    if peer is not None:
        await peer.close()
    elif not await _end_elsewhere(request, call_id):
        raise NotFound(NO_SESSION)
    return web.Response(status=200)


async def _end_elsewhere(request: web.Request, call_id: str) -> bool:
    """The page's DELETE reached a node that does not run the call: tell the one that does
    (relay.calls.commands). False if no other node runs it."""
    state = request.app[APP_STATE]
    if state.db.is_sqlite:
        return False
    async with state.db.session() as session:
        node = await commands.holder(session, call_id)
        if node is None or node == state.settings.effective_node_id():
            return False
        await commands.send(session, node, call_id, commands.END)
    return True
