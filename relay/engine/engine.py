"""The process's voice engine: starts calls, knows the live ones, shuts them down."""

from __future__ import annotations

import asyncio
import gc

import aiohttp

from relay.config import Settings
from relay.engine import speech
from relay.engine.playback import Clips
from relay.engine.ports import CallerLine, CallHandle, CallSetup, CallSink
from relay.engine.session import CallSession
from relay.logs import get_logger
from relay.turns import with_templates

log = get_logger("relay.engine")


class VoiceEngine:
    """One per process. Models are shared by every call; nothing else is."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.active: dict[str, CallHandle] = {}
        self._sessions: dict[str, CallSession] = {}
        self.clips = Clips()  # ``play`` clips, shared by the calls of each project
        speech.configure(
            inference_threads=self.settings.inference_threads,
            tts_cache_bytes=self.settings.tts_cache_mb * 1024 * 1024,
        )

    async def warm(self) -> None:
        """Load and run the default models once (a few seconds), off the event loop."""
        await asyncio.get_running_loop().run_in_executor(
            speech.inference_pool(),
            lambda: speech.warm(
                stt=self.settings.stt,
                tts=self.settings.tts,
                vad_silence_s=self.settings.early_stt_silence_ms / 1000,
            ),
        )
        # What is loaded by now (the app, livekit, the models: ~250k objects) lives as long
        # as the process. A full garbage collection walking it stops the event loop, and so
        # every call's audio, for ~200 ms on a small box; frozen, it is skipped.
        gc.freeze()

    async def start_call(
        self,
        setup: CallSetup,
        line: CallerLine,
        sink: CallSink,
        http: aiohttp.ClientSession,
    ) -> CallHandle:
        """Start the engine side of a call whose transport is connected; what happens on it
        is reported to ``sink``."""
        if setup.voice_mode not in ("webhook", "hosted"):
            raise ValueError(f"unknown voice mode {setup.voice_mode!r}")
        setup = with_templates(setup)  # {{call.from}}, {{user.name}}... in prompt and greeting
        session = CallSession(setup, line, sink, http, self.settings, clips=self.clips)
        self.active[setup.call_id] = session
        self._sessions[setup.call_id] = session
        session._outcome.add_done_callback(lambda _: self._forget(setup.call_id))
        try:
            await session.start()
        except BaseException:
            await session.end("agent_error")
            raise
        log.info(
            "call_started", call_id=setup.call_id, stt=session.stt.model, tts=session.tts.model
        )
        return session

    def _forget(self, call_id: str) -> None:
        self.active.pop(call_id, None)
        self._sessions.pop(call_id, None)

    async def close(self) -> None:
        """End every live call (``failed`` / ``relay_restart``) and wait for them."""
        sessions = list(self._sessions.values())
        await asyncio.gather(*(s.end("relay_restart") for s in sessions), return_exceptions=True)
