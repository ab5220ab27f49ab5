"""What happens to a call once a carrier's media socket is up, whatever its wire format.

A transport (:mod:`relay.transports`) knows its wire format; this module knows the call:
identify it (the media token), move it to ``in_progress``, start the engine with the
transport's :class:`~relay.engine.ports.CallerLine`, pump the caller's side until one end
stops, and record how the call ended (:func:`relay.calls.live.finish`, once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from relay import tokens
from relay.calls import inbound
from relay.calls.live import CallRunner, VoiceEngine, finish
from relay.calls.recovery import expire_unconnected
from relay.config import Settings
from relay.egress import client_session
from relay.engine.ports import CallEnd, CallerLine, CallHandle, CallSetup
from relay.logs import get_logger
from relay.store.db import Database
from relay.transports import MediaConnection

log = get_logger("relay.calls.media")

# A caller sending garbage gets its first few bad frames logged on the call, then counted.
MAX_LOGGED_BAD_FRAMES = 10
RESTART_REASON = "relay_restart"
# After the caller hangs up, how long the engine gets to wind down before it is told to end.
ENGINE_STOP_SECONDS = 10.0


@dataclass(slots=True)
class LiveCall:
    handle: CallHandle
    recorded: asyncio.Event


@dataclass(slots=True)
class MediaDeps:
    db: Database
    node_id: str
    # The engine, made (and its models loaded) only once a call's media token was checked.
    runner: Callable[[], CallRunner]
    http: aiohttp.ClientSession
    signing_key: bytes
    live: dict[str, LiveCall] = field(default_factory=dict)


CallerPump = Callable[[CallHandle], Awaitable[None]]


@dataclass
class MediaRuntime:
    """Per-app media plumbing: the engine, the HTTP client its webhooks use, the tasks of
    open media sockets, and watchdogs that fail calls whose socket never came."""

    db: Database
    node_id: str
    settings: Settings
    signing_key: bytes
    engine_factory: Callable[[], VoiceEngine] | None = None
    engine: VoiceEngine | None = None
    http: aiohttp.ClientSession | None = None
    # Seconds a call may wait in ``connecting`` for its socket (token TTL plus slack).
    connect_deadline: float = inbound.MEDIA_TOKEN_TTL_SECONDS + 15
    live: dict[str, LiveCall] = field(default_factory=dict)
    _runner: CallRunner | None = None
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _sockets: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, socket: Awaitable[None]) -> None:
        """Run a media socket's work in a task of its own, so a cancelled request handler
        (aiohttp may cancel it when the peer disconnects) cannot cut a call short: the
        transport sees the socket close and ends the call as a hang-up."""
        task: asyncio.Task[None] = asyncio.ensure_future(socket)
        self._sockets.add(task)
        task.add_done_callback(self._sockets.discard)
        await asyncio.shield(task)

    def detach(self, call: Awaitable[None], call_id: str) -> None:
        """Run a call whose request has already been answered (a WHIP offer): tracked like a
        socket, so shutdown waits for its end to be recorded."""
        task: asyncio.Task[None] = asyncio.ensure_future(call)
        task.set_name(f"call:{call_id}")
        self._sockets.add(task)
        task.add_done_callback(self._sockets.discard)

    def deps(self) -> MediaDeps:
        if self.http is None or self.http.closed:
            self.http = client_session(self.settings)
        return MediaDeps(
            self.db, self.node_id, self._runner_for, self.http, self.signing_key, self.live
        )

    def _runner_for(self) -> CallRunner:
        engine = self._engine()
        if self._runner is None or self._runner.engine is not engine:
            self._runner = CallRunner(engine, self.settings)
        return self._runner

    def _engine(self) -> VoiceEngine:
        if self.engine is None:
            if self.engine_factory is None:
                raise RuntimeError("no voice engine is configured")
            self.engine = self.engine_factory()
            # Load the speech models now, while the carrier connects; the first call of the
            # process would otherwise wait seconds for them.
            warm = getattr(self.engine, "warm", None)
            if warm is not None:
                self._spawn(warm(), "warm-engine")
        return self.engine

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def expect(self, call_id: str, within: float | None = None) -> None:
        """A carrier (or a web page) was told to open the media for ``call_id``; fail the
        call with ``network_timeout`` if it does not within ``within`` seconds (default
        :attr:`connect_deadline`)."""
        self._engine()
        self._spawn(self._expire(call_id, within or self.connect_deadline), f"expect:{call_id}")

    async def _expire(self, call_id: str, within: float) -> None:
        await asyncio.sleep(within)
        if await expire_unconnected(self.db, call_id):
            log.warning("media_never_connected", call_id=call_id)

    async def drain(self, seconds: float) -> None:
        """Let live calls finish on their own for up to ``seconds`` (no new ones come: the
        server stopped listening)."""
        if seconds <= 0 or not self.live:
            return
        log.info("draining_live_calls", count=len(self.live), seconds=seconds)
        waiting = [asyncio.ensure_future(c.recorded.wait()) for c in self.live.values()]
        try:
            await asyncio.wait(waiting, timeout=seconds)
        finally:
            for waiter in waiting:
                waiter.cancel()

    async def shutdown(self) -> None:
        """End every live call (``failed`` / ``relay_restart``) and wait until each end is
        recorded, before the database goes away."""
        calls = list(self.live.values())
        if not calls:
            return
        log.info("ending_live_calls", count=len(calls))
        await asyncio.gather(*(c.handle.end(RESTART_REASON) for c in calls), return_exceptions=True)
        recorded = [asyncio.ensure_future(c.recorded.wait()) for c in calls]
        _, pending = await asyncio.wait(recorded, timeout=ENGINE_STOP_SECONDS)
        for waiter in pending:
            waiter.cancel()

    async def close(self) -> None:
        if self._sockets:
            _, stuck = await asyncio.wait(list(self._sockets), timeout=ENGINE_STOP_SECONDS)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.close()
        if self.http is not None:
            await self.http.close()


class BadFrames:
    """Frames a transport dropped: logged as ``telephony`` call events, the first few only."""

    def __init__(self, db: Database, call_id: str) -> None:
        self._db = db
        self._call_id = call_id
        self.count = 0

    async def record(self, problem: str, frame: str | bytes) -> None:
        self.count += 1
        if self.count <= MAX_LOGGED_BAD_FRAMES:
            shown = frame[:200] if isinstance(frame, str) else f"<{len(frame)} bytes>"
            await inbound.telephony_event(
                self._db,
                self._call_id,
                f"dropped a bad frame: {problem}",
                data={"frame": shown, "badFrames": self.count},
            )


MEDIA: web.AppKey[MediaRuntime] = web.AppKey("relay_media", MediaRuntime)


async def serve(deps: MediaDeps, conn: MediaConnection, call_id: str | None) -> None:
    """Run one media socket: ``call_id`` comes from a media token already checked (in the
    URL); without one, the transport's handshake must carry the token."""
    shake = await conn.handshake()
    if shake is None:
        return
    if call_id is None:
        try:
            call_id = tokens.verify(
                deps.signing_key, shake.token or "", inbound.MEDIA_TOKEN_PURPOSE
            )
        except tokens.TokenError as exc:
            await conn.refuse(f"media token: {exc}")
            return
    try:
        run = await begin(deps, conn, call_id, shake.carrier_call_id)
    except inbound.CallUnavailable as exc:
        await conn.refuse(exc.message)
        return
    await run


async def begin(
    deps: MediaDeps, conn: MediaConnection, call_id: str, carrier_call_id: str | None = None
) -> Awaitable[None]:
    """The call goes ``in_progress`` now (raises :class:`inbound.CallUnavailable` if it is
    not waiting for media); the returned work runs it to its end. A transport whose
    handshake is an HTTP request (WebRTC's WHIP offer) answers it in between."""
    setup = await inbound.begin(
        deps.db,
        call_id,
        node_id=deps.node_id,
        connection_types=conn.connection_types,
        carrier_call_id=carrier_call_id,
    )
    db = deps.db

    async def note(message: str, data: dict[str, Any]) -> None:
        await inbound.telephony_event(db, call_id, message, level="info", data=data)

    async def run() -> None:
        line = await conn.accept(call_id, note)
        bad = BadFrames(db, call_id)
        await run_call(deps, setup, line, lambda handle: conn.pump(handle, bad.record))

    return run()


async def run_call(
    deps: MediaDeps, setup: CallSetup, line: CallerLine, pump: CallerPump
) -> tuple[str, str | None]:
    """Run the call to its end and record it. ``pump`` feeds the caller's audio and events
    into the handle and returns when the caller is gone (carrier ``stop``, socket closed)."""
    call_id = setup.call_id
    try:
        runner = deps.runner()
        handle = await runner.engine.start_call(setup, line, runner.sink(deps.db, setup), deps.http)
    except Exception:
        log.exception("engine_start_failed", call_id=call_id)
        await finish(deps.db, call_id, CallEnd("failed", "agent_error"))
        with contextlib.suppress(Exception):
            await line.hangup()
        return "failed", "agent_error"
    live = LiveCall(handle, asyncio.Event())
    deps.live[call_id] = live
    caller = asyncio.create_task(_pump(pump, handle, call_id), name=f"caller:{call_id}")
    ended = asyncio.create_task(handle.wait(), name=f"engine:{call_id}")
    result = CallEnd("failed", RESTART_REASON)
    try:
        await asyncio.wait({caller, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not ended.done():
            handle.caller_hung_up()
            try:
                await asyncio.wait_for(asyncio.shield(ended), ENGINE_STOP_SECONDS)
            except TimeoutError:
                log.warning("engine_slow_to_stop", call_id=call_id)
                await handle.end("completed")
        result = _result_of(ended, call_id)
    except asyncio.CancelledError:
        await asyncio.shield(handle.end(RESTART_REASON))
        raise
    finally:
        caller.cancel()
        if not ended.done():
            ended.cancel()
        await asyncio.gather(caller, ended, return_exceptions=True)
        # Shielded: a cancelled handler (the relay stopping) still records how the call ended.
        await asyncio.shield(_record_end(deps, call_id, result, line))
    return result.status, result.reason


async def _record_end(deps: MediaDeps, call_id: str, end: CallEnd, line: CallerLine) -> None:
    try:
        await finish(deps.db, call_id, end)
    finally:
        live = deps.live.pop(call_id, None)
        if live is not None:
            live.recorded.set()
        with contextlib.suppress(Exception):
            await line.hangup()


async def _pump(pump: CallerPump, handle: CallHandle, call_id: str) -> None:
    try:
        await pump(handle)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        log.info("caller_connection_reset", call_id=call_id)
    except Exception:
        log.exception("caller_side_failed", call_id=call_id)


def _result_of(task: asyncio.Task[CallEnd], call_id: str) -> CallEnd:
    if task.cancelled():
        return CallEnd("failed", "agent_error")
    exc = task.exception()
    if exc is not None:
        log.error("engine_failed", call_id=call_id, error=repr(exc))
        return CallEnd("failed", "agent_error")
    end = task.result()
    if end.status not in ("completed", "failed"):
        return CallEnd("failed", "agent_error")
    return end
