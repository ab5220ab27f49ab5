"""Calls running in this process: the engine reports to a :class:`CallRecorder`, and how each
call ended is written by :func:`finish`, the one writer of a running call's end.

    runner = CallRunner(engine, settings)       # one per process
    call = await runner.start_call(setup, line, db, http)
    status, reason = await call.wait()          # the end, stored
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import aiohttp

from relay.calls.recordings import RecordingJobs
from relay.calls.records import CallRecorder, end_call
from relay.calls.recovery import release_call
from relay.config import Settings
from relay.engine.ports import PCM, CallEnd, CallerLine, CallHandle, CallSetup, CallSink
from relay.logs import get_logger
from relay.store.db import Database

log = get_logger("relay.calls.live")


class VoiceEngine(Protocol):
    """The engine as the calls domain sees it (``relay.engine.VoiceEngine``)."""

    @property
    def active(self) -> Mapping[str, CallHandle]:
        """The calls it runs, by id."""
        ...

    async def start_call(
        self, setup: CallSetup, line: CallerLine, sink: CallSink, http: aiohttp.ClientSession
    ) -> CallHandle: ...


async def finish(db: Database, call_id: str, end: CallEnd) -> bool:
    """Store how a running call ended (with the engine's account of why, if it gave one) and
    let go of it; ``False`` if it had already ended."""
    async with db.session() as session:
        ended = await end_call(
            session, call_id, end.status, reason=end.reason, event=end.detail, data=end.data
        )
        await release_call(session, call_id)
    if ended:
        log.info("call_ended", call_id=call_id, status=end.status, reason=end.reason)
    return ended


class LiveCall:
    """A call the engine runs, whose end is stored when it is awaited."""

    def __init__(self, handle: CallHandle, db: Database) -> None:
        self.handle = handle
        self.call_id = handle.call_id
        self._db = db
        self._recorded = False

    def push_audio(self, pcm: PCM, sample_rate: int) -> None:
        self.handle.push_audio(pcm, sample_rate)

    def push_dtmf(self, digit: str) -> None:
        self.handle.push_dtmf(digit)

    def caller_hung_up(self) -> None:
        self.handle.caller_hung_up()

    async def end(self, reason: str = "completed") -> None:
        await self.handle.end(reason)

    async def leave(self, message: str | None, detail: str) -> None:
        await self.handle.leave(message, detail)

    async def wait(self) -> tuple[str, str | None]:
        end = await self.handle.wait()
        await self.record(end)
        return end.status, end.reason

    async def record(self, end: CallEnd) -> None:
        if not self._recorded:
            self._recorded = True
            await finish(self._db, self.call_id, end)


class CallRunner:
    """Starts calls in the engine, each with its own sink; keeps the recordings' encodes,
    which outlive their calls."""

    def __init__(self, engine: VoiceEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.recordings = RecordingJobs()

    def sink(self, db: Database, setup: CallSetup) -> CallRecorder:
        return CallRecorder(
            db,
            setup.call_id,
            project_id=setup.project_id,
            settings=self.settings,
            jobs=self.recordings,
        )

    async def start_call(
        self, setup: CallSetup, line: CallerLine, db: Database, http: aiohttp.ClientSession
    ) -> LiveCall:
        handle = await self.engine.start_call(setup, line, self.sink(db, setup), http)
        return LiveCall(handle, db)

    @property
    def active(self) -> Mapping[str, CallHandle]:
        return self.engine.active

    async def close(self) -> None:
        """Wait for the recordings still being encoded."""
        await self.recordings.drain()
