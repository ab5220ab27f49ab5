"""The media sockets: where a call's audio comes and goes, authenticated by media tokens.

They stay out of the OpenAPI document. The webhooks that hand out their URLs and tokens are
in :mod:`relay.api.carriers`.

    GET  /media/twilio                  Twilio Media Streams socket (Twilio and sim calls)
    GET  /media/plivo                   Plivo audio stream socket
    GET  /media/websocket               raw PCM socket (bring your own telephony)
    GET  /media/telnyx                  Telnyx media streaming socket (Telnyx and BYOT calls)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay import tokens
from relay.api.carriers import plivo as plivo_hooks
from relay.api.carriers import twilio as twilio_hooks
from relay.api.carriers.telnyx import control_for
from relay.calls import inbound, media
from relay.calls.media import MEDIA
from relay.engine.ports import CallerLine, CallHandle
from relay.errors import Forbidden, RateLimited
from relay.state import APP_STATE
from relay.store.models import Call
from relay.transports import BadFrame, Handshake, MediaConnection, Note
from relay.transports.control import CallControl, ControlLookup
from relay.transports.plivo import PlivoConnection
from relay.transports.telnyx import TelnyxConnection
from relay.transports.twilio import TwilioConnection
from relay.transports.websocket import WebsocketConnection

MEDIA_TOKEN_REFUSED = "The media token is missing, invalid or expired: {why}."
CALL_NOT_WAITING = "This call is not waiting for a media connection."
# Twilio sends a frame every 20 ms; a socket silent this long is dead.
HEARTBEAT_SECONDS = 20.0
# How long a hangup waits for the peer to answer our close frame.
CLOSE_TIMEOUT_SECONDS = 2.0
# Sockets still waiting for the frame that carries their token, per client address and in
# all: Twilio's media servers open a handful of sockets per address at once and each sends
# its token within milliseconds, so these only bite on a peer holding sockets open unnamed.
UNAUTHENTICATED_PER_ADDRESS = 16
UNAUTHENTICATED_TOTAL = 256
TOO_MANY_UNAUTHENTICATED = (
    "Too many media sockets from this address have not yet sent their token; "
    "finish or close those first."
)


class Unauthenticated:
    """The media sockets that have not shown a token yet, counted per client address."""

    def __init__(
        self, per_address: int = UNAUTHENTICATED_PER_ADDRESS, total: int = UNAUTHENTICATED_TOTAL
    ) -> None:
        self.per_address = per_address
        self.total = total
        self._open: Counter[str] = Counter()

    def __len__(self) -> int:
        return self._open.total()

    def admit(self, address: str) -> Callable[[], None]:
        """Count one socket from ``address``; the returned function (idempotent) uncounts it.
        Past a cap: 429 ``too_many_unauthenticated_sockets``, before any upgrade."""
        if self._open[address] >= self.per_address or len(self) >= self.total:
            raise RateLimited(
                TOO_MANY_UNAUTHENTICATED,
                code="too_many_unauthenticated_sockets",
                headers={"Retry-After": "1"},
            )
        self._open[address] += 1
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                self._open[address] -= 1
                if self._open[address] <= 0:
                    del self._open[address]

        return leave


UNAUTHENTICATED: web.AppKey[Unauthenticated] = web.AppKey("relay_media_unnamed", Unauthenticated)


class _CountedUntilNamed(TwilioConnection):
    """A Twilio socket without a token in its URL: it holds its place in
    :class:`Unauthenticated` until its ``start`` frame has been read (or it gave up)."""

    def __init__(
        self, ws: web.WebSocketResponse, leave: Callable[[], None], controls: ControlLookup
    ) -> None:
        super().__init__(ws, controls)
        self._leave = leave

    async def handshake(self) -> Handshake | None:
        try:
            return await super().handshake()
        finally:
            self._leave()


def _controls(
    request: web.Request,
    control_for: Callable[[web.Application, str], Awaitable[CallControl | None]],
) -> ControlLookup:
    """A live call's carrier API (hang-up, transfer, digits), looked up once the socket has
    named its call."""
    app = request.app
    return lambda call_id: control_for(app, call_id)


def _socket() -> web.WebSocketResponse:
    # No permessage-deflate: 160-byte audio frames do not shrink, and it costs CPU per frame.
    return web.WebSocketResponse(
        heartbeat=HEARTBEAT_SECONDS, timeout=CLOSE_TIMEOUT_SECONDS, compress=False
    )


def install(app: web.Application) -> None:
    """Add the media routes (the media runtime is built by ``relay.app``)."""
    app.router.add_get("/media/twilio", twilio_media)
    app.router.add_get("/media/websocket", websocket_media)
    app.router.add_get("/media/telnyx", telnyx_media)
    app.router.add_get("/media/plivo", plivo_media)
    app[UNAUTHENTICATED] = Unauthenticated()


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
    if "token" in request.query:
        call_id = _verify(request, request.query["token"])
        await _waiting_call(request, call_id, ("twilio", "sim"))
        deps = request.app[MEDIA].deps()
        ws = _socket()
        await ws.prepare(request)
        conn = TwilioConnection(ws, _controls(request, twilio_hooks.control_for))
        await request.app[MEDIA].serve(media.serve(deps, conn, call_id))
        return ws
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise Forbidden(MEDIA_TOKEN_REFUSED.format(why="no token"), code="invalid_media_token")
    leave = request.app[UNAUTHENTICATED].admit(request.remote or "")
    try:
        deps = request.app[MEDIA].deps()
        ws = _socket()
        await ws.prepare(request)
        conn = _CountedUntilNamed(ws, leave, _controls(request, twilio_hooks.control_for))
        await request.app[MEDIA].serve(media.serve(deps, conn, None))
    finally:
        leave()
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


async def telnyx_media(request: web.Request) -> web.StreamResponse:
    """Telnyx media streaming; the token must be in the stream URL."""
    call_id = _verify(request, request.query.get("token"))
    call = await _waiting_call(request, call_id, TelnyxConnection.connection_types)
    control = await control_for(request.app, call)
    deps = request.app[MEDIA].deps()
    ws = _socket()
    await ws.prepare(request)
    conn = TelnyxConnection(ws, control)
    await request.app[MEDIA].serve(media.serve(deps, conn, call_id))
    return ws


class _Unnamed:
    """Any carrier's socket without a token in its URL, counted in :class:`Unauthenticated`
    until its handshake has named the call (or it gave up)."""

    def __init__(self, conn: MediaConnection, leave: Callable[[], None]) -> None:
        self._conn = conn
        self._leave = leave
        self.connection_types = conn.connection_types

    async def handshake(self) -> Handshake | None:
        try:
            return await self._conn.handshake()
        finally:
            self._leave()

    async def refuse(self, why: str) -> None:
        await self._conn.refuse(why)

    async def accept(self, call_id: str, note: Note) -> CallerLine:
        return await self._conn.accept(call_id, note)

    async def pump(self, handle: CallHandle, bad_frame: BadFrame) -> None:
        await self._conn.pump(handle, bad_frame)


async def plivo_media(request: web.Request) -> web.StreamResponse:
    """Plivo's audio stream. The token is checked here when it is in the URL; otherwise the
    ``start`` event's ``extra_headers`` must carry it."""
    call_id: str | None = None
    leave: Callable[[], None] = lambda: None  # noqa: E731
    if "token" in request.query:
        call_id = _verify(request, request.query["token"])
        await _waiting_call(request, call_id, PlivoConnection.connection_types)
    elif not web.WebSocketResponse().can_prepare(request).ok:
        raise Forbidden(MEDIA_TOKEN_REFUSED.format(why="no token"), code="invalid_media_token")
    else:
        leave = request.app[UNAUTHENTICATED].admit(request.remote or "")
    try:
        deps = request.app[MEDIA].deps()
        ws = _socket()
        await ws.prepare(request)
        conn: MediaConnection = PlivoConnection(ws, _controls(request, plivo_hooks.control_for))
        if call_id is None:
            conn = _Unnamed(conn, leave)
        await request.app[MEDIA].serve(media.serve(deps, conn, call_id))
    finally:
        leave()
    return ws
