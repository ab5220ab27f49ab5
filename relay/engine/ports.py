"""The seam between the voice engine and the transports that carry a call's audio.

A transport (Twilio Media Streams, raw websocket, sim) decodes its wire format into 16-bit
PCM and hands it to the call's :class:`CallHandle`; the engine speaks back through the
transport's :class:`CallerLine`. Nothing in the engine knows which carrier a call came from.

The engine paces outbound audio itself (one 20 ms frame per 20 ms of wall time), so it
knows exactly what the caller has heard when they barge in; ``send_audio`` should write the
frame out at once and never sleep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

PCM = npt.NDArray[np.int16]
FRAME_MS = 20


@dataclass(frozen=True, slots=True)
class CallSetup:
    """Everything the engine needs to run one call, frozen when the call was created."""

    call_id: str
    project_id: str
    agent_id: str | None
    number_id: str | None
    direction: str  # inbound | outbound
    channel: str  # voice
    from_number: str | None
    to_number: str | None
    voice_mode: str  # webhook | hosted
    webhook_url: str | None
    webhook_secrets: tuple[str, ...]
    webhook_timeout_ms: int
    # The agent's settings at call creation (snake_case keys, defaults applied): greeting,
    # first_speaker, interruptible, inactivity_timeout_seconds, inactivity_action,
    # max_duration_seconds, stt, tts, voice, fallback_text, filler_after_ms, filler_text,
    # max_webhook_failures, system_prompt, ...
    agent: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


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


class CallHandle(Protocol):
    """What a transport holds for a running call."""

    call_id: str

    def push_audio(self, pcm: PCM, sample_rate: int) -> None:
        """Caller audio, any frame size; never blocks."""

    def push_dtmf(self, digit: str) -> None: ...

    def caller_hung_up(self) -> None: ...

    async def end(self, reason: str = "completed") -> None:
        """End from the API or the relay; returns once the call has stopped."""

    async def wait(self) -> tuple[str, str | None]:
        """Wait for the end: ``("completed", None)`` or ``("failed", reason)``."""
