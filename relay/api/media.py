"""Routes carriers use, not developers: voice webhooks and media sockets.

These answer TwiML, JSON for the sim carrier, or a websocket; they are authenticated by
carrier signatures, media tokens or (sim) an API key, and stay out of the OpenAPI document.

    POST /carriers/twilio/voice         Twilio: a call came in (TwiML)
    POST /carriers/twilio/voice/after   Twilio: the media stream ended (TwiML)
    POST /carriers/sim/voice            sim carrier: place a call (only with RELAY_SIM_ENABLED)
    GET  /media/twilio                  Twilio Media Streams socket (Twilio and sim calls)
    GET  /media/websocket               raw PCM socket (bring your own telephony)
"""

from __future__ import annotations

from aiohttp import web

from relay import tokens
from relay.calls import inbound, media
from relay.calls.media import MEDIA
from relay.carriers.sim import voice as sim_voice
from relay.carriers.twilio import voice as twilio_voice
from relay.errors import Forbidden
from relay.state import APP_STATE
from relay.store.models import Call
from relay.transports.twilio import TwilioConnection
from relay.transports.websocket import WebsocketConnection

MEDIA_TOKEN_REFUSED = "The media token is missing, invalid or expired: {why}."
CALL_NOT_WAITING = "This call is not waiting for a media connection."
# Twilio sends a frame every 20 ms; a socket silent this long is dead.
HEARTBEAT_SECONDS = 20.0
# How long a hangup waits for the peer to answer our close frame.
CLOSE_TIMEOUT_SECONDS = 2.0


def _socket() -> web.WebSocketResponse:
    # No permessage-deflate: 160-byte audio frames do not shrink, and it costs CPU per frame.
    return web.WebSocketResponse(
        heartbeat=HEARTBEAT_SECONDS, timeout=CLOSE_TIMEOUT_SECONDS, compress=False
    )


def install(app: web.Application) -> None:
    """Add the carrier and media routes (the media runtime is built by ``relay.app``)."""
    settings = app[APP_STATE].settings
    app.router.add_post("/carriers/twilio/voice", twilio_voice.voice_webhook)
    app.router.add_post(twilio_voice.AFTER_PATH, twilio_voice.after_stream)
    if settings.sim_enabled:
        app.router.add_post(sim_voice.PATH, sim_voice.voice_webhook)
    app.router.add_get("/media/twilio", twilio_media)
    app.router.add_get("/media/websocket", websocket_media)


def _verify(request: web.Request, token: str | None) -> str:
    try:
        return tokens.verify(
            request.app[APP_STATE].signing_key, token or "", inbound.MEDIA_TOKEN_PURPOSE
        )
    except tokens.TokenError as exc:
        raise Forbidden(MEDIA_TOKEN_REFUSED.format(why=exc), code="invalid_media_token") from exc


async def _waiting_call(
    request: web.Request, call_id: str, connection_types: tuple[str, ...]
) -> Call:
    call = await inbound.load_call(request.app[APP_STATE].db, call_id)
    if (
        call is None
        or call.status not in inbound.AWAITING_MEDIA
        or call.connection_type not in connection_types
    ):
        raise Forbidden(CALL_NOT_WAITING, code="call_not_connecting")
    return call


async def twilio_media(request: web.Request) -> web.StreamResponse:
    """Twilio Media Streams. The token is checked here when it is in the URL; otherwise the
    socket opens and the ``start`` frame's ``token`` parameter must carry it."""
    call_id: str | None = None
    if "token" in request.query:
        call_id = _verify(request, request.query["token"])
        await _waiting_call(request, call_id, ("twilio", "sim"))
    elif not web.WebSocketResponse().can_prepare(request).ok:
        raise Forbidden(MEDIA_TOKEN_REFUSED.format(why="no token"), code="invalid_media_token")
    deps = request.app[MEDIA].deps()
    ws = _socket()
    await ws.prepare(request)
    await request.app[MEDIA].serve(media.serve(deps, TwilioConnection(ws), call_id))
    return ws


async def websocket_media(request: web.Request) -> web.StreamResponse:
    """Raw PCM over a websocket; the token must be in the URL."""
    call_id = _verify(request, request.query.get("token"))
    call = await _waiting_call(request, call_id, ("websocket",))
    deps = request.app[MEDIA].deps()
    ws = _socket()
    await ws.prepare(request)
    conn = WebsocketConnection(ws, inbound.sample_rate_of(call))
    await request.app[MEDIA].serve(media.serve(deps, conn, call_id))
    return ws
