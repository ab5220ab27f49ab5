"""Silero VAD (the ONNX model inside livekit-plugins-silero), run on the event loop, once
per call.

:func:`vad` is the process's Silero VAD for a setting; :class:`CallVAD` shares one stream of
it between the two parts of a call that need it.

livekit-plugins-silero runs each 32 ms window (256 samples at 8 kHz) through
``loop.run_in_executor(None, model, window)``. The model itself takes ~0.1 ms (one intra-op
thread, no spinning), but the hop costs more than that: a submit to the default executor, a
thread wake-up, a GIL hand-over and a ``call_soon_threadsafe`` back, 31 times a second per
stream, for every call.

:class:`InlineSileroVAD` is Silero's own VAD (same model, options, events) whose streams
run the window inline: their ``run_in_executor`` calls the model and returns a finished
future, which ``await`` takes without suspending. A window blocks the loop for about
0.1 ms, well inside a 20 ms frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

from livekit import rtc
from livekit.agents import vad as agents_vad
from livekit.agents.utils import aio
from livekit.plugins import silero
from livekit.plugins.silero import onnx_model
from livekit.plugins.silero.vad import VADStream

from relay.engine.speech.pool import load_once

VAD_SAMPLE_RATE: Literal[8000, 16000] = 8000


class _InlineExecutor:
    """The one loop method a Silero stream uses for inference, run inline; anything else
    goes to the real loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run_in_executor(self, _executor: Any, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._loop.create_future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


class InlineSileroVAD(silero.VAD):
    """``silero.VAD`` whose streams run inference on the event loop (see the module doc)."""

    def stream(self) -> VADStream:
        stream = VADStream(
            self,
            self._opts,
            onnx_model.OnnxModel(
                onnx_session=self._onnx_session, sample_rate=self._opts.sample_rate
            ),
        )
        stream._loop = _InlineExecutor(stream._loop)  # type: ignore[assignment]
        self._streams.add(stream)
        return stream


def vad(*, min_silence_s: float, min_speech_s: float = 0.05) -> agents_vad.VAD:
    """A Silero VAD. Streams made from one object share its ONNX session but not state."""
    return load_once(
        f"vad:{min_silence_s}:{min_speech_s}",
        lambda: InlineSileroVAD.load(
            min_silence_duration=min_silence_s,
            min_speech_duration=min_speech_s,
            activation_threshold=0.5,
            sample_rate=VAD_SAMPLE_RATE,
        ),
    )


class CallVAD(agents_vad.VAD):
    """One VAD stream per call, heard by two: the call's :class:`EarlySTT`, which owns the
    stream and feeds it (:meth:`source`), and livekit's session (barge-in, the caller's
    speaking state), which gets listeners (:meth:`stream`) whose frames are dropped and whose
    events are the source's, so Silero runs once per call on the caller's audio, not twice.

    The source is fed what the STT stream gets: during uninterruptible agent speech livekit
    hands STT silence in place of the caller's audio, so the session does not hear the
    caller start speaking then either (it could not interrupt anyway)."""

    def __init__(self, base: agents_vad.VAD) -> None:
        super().__init__(capabilities=base.capabilities)
        self._base = base
        self._listeners: set[_Listener] = set()

    @property
    def model(self) -> str:
        return self._base.model

    @property
    def provider(self) -> str:
        return self._base.provider

    def source(self) -> VADSource:
        """A new stream of the base VAD whose events also reach every listener."""
        return VADSource(self, self._base.stream())

    def stream(self) -> agents_vad.VADStream:
        listener = _Listener(self)
        self._listeners.add(listener)
        return listener

    def _publish(self, event: agents_vad.VADEvent) -> None:
        for listener in list(self._listeners):
            listener._deliver(event)


class VADSource:
    """The base stream; its reader passes each event on to the listeners (:meth:`publish`)
    after acting on it, unless they are held: while caller speech is screened as a possible
    backchannel, the session must not hear it start (it would cut the agent); the held
    events are later released or dropped."""

    def __init__(self, owner: CallVAD, stream: agents_vad.VADStream) -> None:
        self._owner = owner
        self._stream = stream
        self._held: list[agents_vad.VADEvent] | None = None

    def hold(self) -> None:
        if self._held is None:
            self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for event in held:
            self._owner._publish(event)

    def drop(self) -> None:
        self._held = None

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        self._stream.push_frame(frame)

    def flush(self) -> None:
        self._stream.flush()

    def end_input(self) -> None:
        self._stream.end_input()

    async def aclose(self) -> None:
        await self._stream.aclose()

    def __aiter__(self) -> VADSource:
        return self

    async def __anext__(self) -> agents_vad.VADEvent:
        return await self._stream.__anext__()

    def publish(self, event: agents_vad.VADEvent) -> None:
        """Pass ``event`` on to the listeners (once its reader has seen it), or hold it."""
        if self._held is not None:
            self._held.append(event)
        else:
            self._owner._publish(event)


class _Listener(agents_vad.VADStream):
    """What livekit's session reads: the source's events. Frames pushed here (the same
    audio the source gets) and flushes are dropped. It does not run ``VADStream.__init__``:
    with nothing to analyse it needs no task, and no metrics tee copying every event."""

    def __init__(self, owner: CallVAD) -> None:
        self._vad = owner
        self._owner = owner
        self._events = aio.Chan[agents_vad.VADEvent]()

    async def _main_task(self) -> None:  # never started (see the class doc)
        return None

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        return None

    def flush(self) -> None:
        return None

    def end_input(self) -> None:
        self._owner._listeners.discard(self)
        self._events.close()

    async def aclose(self) -> None:
        self.end_input()

    def _deliver(self, event: agents_vad.VADEvent) -> None:
        if not self._events.closed:
            self._events.send_nowait(event)

    async def __anext__(self) -> agents_vad.VADEvent:
        return await self._events.__anext__()
