"""The seam between the voice engine and the transports that carry a call's audio.

A transport (Twilio Media Streams, raw websocket, sim) decodes its wire format into 16-bit
PCM and hands it to the call's :class:`CallHandle`; the engine speaks back through the
transport's :class:`CallerLine`. Nothing in the engine knows which carrier a call came from.

The engine paces outbound audio itself (one 20 ms frame per 20 ms of wall time), so it
knows exactly what the caller has heard when they barge in; ``send_audio`` should write the
frame out at once and never sleep.

The engine stores nothing itself: it reports a call's transcript, metrics, events and
recording to the :class:`CallSink` it was given, and ``wait()`` says how the call ended
(:class:`CallEnd`); the calls domain writes both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from relay.engine.recording import StereoRecorder
from relay.turns.setup import CallSetup

PCM = npt.NDArray[np.int16]
FRAME_MS = 20


@dataclass(frozen=True, slots=True)
class Segment:
    """One line of the transcript, in milliseconds from the start of the call."""

    seq: int
    speaker: str  # agent | user | dtmf | tool
    text: str
    start_ms: int
    end_ms: int
    interrupted: bool = False
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CallEnd:
    """How a call ended: ``completed``, or ``failed`` with a stable ``reason``; ``detail``
    (and ``data``) say why in the call's event log when the engine itself ended it."""

    status: Literal["completed", "failed"]
    reason: str | None = None
    detail: str | None = None
    data: dict[str, Any] | None = None


class CallerLine(Protocol):
    """The way back to the caller, implemented by each transport."""

    sample_rate: int

    async def send_audio(self, pcm: PCM) -> None:
        """One frame of ``sample_rate`` PCM, written out immediately (the engine paces)."""

    async def clear(self) -> None:
        """Drop whatever the carrier still buffers (barge-in)."""

    async def send_dtmf(self, digits: str) -> None: ...

    async def transfer(self, to: str) -> None: ...

    async def hangup(self) -> None:
        """End the call from our side (after the engine has finished speaking)."""


@runtime_checkable
class LiveView(Protocol):
    """A line that also shows the call as it happens (a web page's data channel). Events are
    small JSON objects (``{"type": "transcript" | "agent_state" | "ended", ...}``, README
    "Web calls"); the method returns at once and drops what it cannot deliver."""

    def live_event(self, event: dict[str, Any]) -> None: ...


class CallHandle(Protocol):
    """What a transport holds for a running call."""

    call_id: str

    def push_audio(self, pcm: PCM, sample_rate: int) -> None:
        """Caller audio, any frame size; never blocks."""

    def push_dtmf(self, digit: str) -> None: ...

    def caller_hung_up(self) -> None: ...

    async def end(self, reason: str = "completed") -> None:
        """End from the API or the relay; returns once the call has stopped."""

    async def leave(self, message: str | None, detail: str) -> None:
        """Cut whatever is being said, speak ``message`` (if any; the caller cannot barge
        in), then end the call ``completed`` with ``detail`` in its event log."""

    async def wait(self) -> CallEnd:
        """Wait for the end; the engine writes nothing about it, its caller does."""


class CallSink(Protocol):
    """Where the engine reports what happens on a call; the calls domain stores it. Every
    method but :meth:`flush` returns at once (the audio path never waits on storage)."""

    def segment(self, segment: Segment) -> None: ...

    def turn_metrics(self, turn_id: str, values: dict[str, Any]) -> None: ...

    def event(
        self, source: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        """One line of the call's event log."""

    def agent_interrupted(self, turn_id: str, heard: str, spoken_ms: int) -> None:
        """The caller cut the agent's reply to ``turn_id`` after ``spoken_ms`` of it, having
        heard ``heard`` (the ``agent.interrupted`` lifecycle event)."""

    def conversation_state(self, state: dict[str, Any]) -> None:
        """The ``state`` the brain returned, echoed back next turn."""

    def recording_dir(self) -> Path:
        """Where this call's recording file goes (the engine writes it while the call runs)."""

    def recording_started(self, recording: StereoRecorder) -> None: ...

    def recording_finished(self, recording: StereoRecorder) -> None:
        """The file is closed; encoding and storing it may outlive the call."""

    async def flush(self) -> None:
        """Return once everything reported so far is stored."""


__all__ = [
    "PCM",
    "CallEnd",
    "CallHandle",
    "CallSetup",
    "CallSink",
    "CallerLine",
    "LiveView",
    "Segment",
]
