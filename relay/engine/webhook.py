"""The developer's webhook as the session's brain: one ``agent.message`` POST per turn.

:class:`WebhookLLM` is a livekit ``llm.LLM`` whose stream hands each reply chunk's text to
the session the moment it arrives. Everything a chunk carries besides text (``state``,
``hangup``, ``transfer``, ``dtmf``, ``interruptible``, the ``play`` clips) is collected in
the turn's :class:`ReplyPlan`, which the call session carries out (see
``relay.engine.session``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, llm
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from relay.engine.ports import PCM
from relay.engine.speech import UtteranceTiming
from relay.metrics import TURN_STAGES
from relay.turns.protocol import TurnTiming

Emit = Callable[[str], None]
TurnRunner = Callable[[llm.ChatContext, Emit], Awaitable[None]]


class Action(StrEnum):
    """What a reply asks for besides words, carried out once it has been spoken."""

    DTMF = "dtmf"
    TRANSFER = "transfer"
    HANGUP = "hangup"
    FAIL = "fail"  # the turn failed once too often: end the call


@dataclass(slots=True)
class TurnRecord:
    """One agent turn's timeline (``time.perf_counter()`` seconds) and outcome."""

    turn_id: str
    kind: str  # speech | dtmf | open
    input_at: float  # end of caller speech as the engine saw it, or the DTMF / call start
    utterance: UtteranceTiming | None = None
    webhook: TurnTiming | None = None
    started_at: float | None = None  # the session asked for a reply
    tts_started_at: float | None = None
    tts_first_audio_at: float | None = None
    first_frame_at: float | None = None
    error: str | None = None
    stored: bool = False
    speculative: bool = False  # its request went out on the early transcript

    def _brain_wait(self, first_chunk: float | None) -> float | None:
        """How long the turn waited for the brain's first chunk: a speculative request's
        time before the turn was confirmed cost the caller nothing."""
        hook = self.webhook
        if not self.speculative or hook is None or hook.first_chunk_at is None:
            return first_chunk
        if self.started_at is None:
            return first_chunk
        return round(max(0.0, hook.first_chunk_at - self.started_at) * 1000, 1)

    def values(self) -> dict[str, Any]:
        """The TurnMetrics row: milliseconds, ``None`` where a stage did not run."""

        def ms(a: float | None, b: float | None) -> float | None:
            return round((b - a) * 1000, 1) if a is not None and b is not None else None

        utt = self.utterance
        endpointing = stt = stt_wait = saved = None
        if utt is not None and utt.endpoint_at:
            endpointing = round(utt.endpointing_ms, 1)
            stt = round(utt.stt_ms, 1)
            stt_wait = round(max(0.0, utt.stt_done_at - utt.endpoint_at) * 1000, 1)
            saved = round(utt.saved_ms, 1)
        hook = self.webhook
        first_chunk = ms(hook.sent_at, hook.first_chunk_at) if hook is not None else None
        tts_first = ms(self.tts_started_at, self.tts_first_audio_at)
        e2e = ms(self.input_at, self.first_frame_at)
        overhead = None
        if e2e is not None:
            waits = (endpointing, stt_wait, self._brain_wait(first_chunk), tts_first)
            overhead = e2e - sum(v or 0.0 for v in waits)
            overhead = round(overhead, 1)
        return {
            "kind": self.kind,
            "overhead": self._overhead(),
            "endpointing_ms": endpointing,
            "stt_ms": stt,
            "stt_wait_ms": stt_wait,
            "early_stt_saved_ms": saved,
            "early_stt_discarded": utt.discarded if utt is not None else None,
            "webhook_first_chunk_ms": first_chunk,
            "speculative": self.speculative,
            "tts_first_audio_ms": tts_first,
            "relay_overhead_ms": overhead,
            "e2e_ms": e2e,
            "error": self.error,
        }

    def _overhead(self) -> dict[str, float | None]:
        """Where the relay's own time went (ms): turn end -> reply asked for -> request sent,
        first chunk -> text to TTS, first TTS audio -> first frame on the line."""

        def ms(a: float | None, b: float | None) -> float | None:
            return round((b - a) * 1000, 1) if a is not None and b is not None else None

        utt, hook = self.utterance, self.webhook
        ready = max(utt.endpoint_at, utt.stt_done_at) if utt is not None else None
        sent = hook.sent_at if hook is not None and not self.speculative else None
        chunk_at = hook.first_chunk_at if hook is not None else None
        if self.speculative and chunk_at is not None and self.started_at is not None:
            chunk_at = max(chunk_at, self.started_at)  # kept chunks go when the turn starts
        return {
            "transcript_to_session": ms(ready, utt.committed_at) if utt is not None else None,
            "session_to_reply": ms(utt.committed_at if utt else None, self.started_at),
            "reply_to_request": ms(self.started_at, sent),
            "chunk_to_tts": ms(chunk_at, self.tts_started_at),
            "audio_to_line": ms(self.tts_first_audio_at, self.first_frame_at),
        }

    def observe(self) -> None:
        """Export the stages to the Prometheus histograms."""
        values = self.values()
        for stage, histogram in TURN_STAGES.items():
            value = values.get(f"{stage}_ms")
            if isinstance(value, int | float):
                histogram.observe(max(0.0, value) / 1000)


@dataclass(slots=True)
class ReplyPlan:
    """What one webhook reply asked for, besides its words."""

    turn: TurnRecord
    default_interruptible: bool
    marks: list[tuple[int, bool]] = field(default_factory=list)  # (text offset, interruptible)
    actions: list[tuple[Action, str]] = field(default_factory=list)  # (action, its argument)
    text: str = ""
    # The reply's ``play`` clips in order, each (URL, its download); the text holds a
    # PLAY_MARK where each one goes, and the speaker takes them in that order.
    plays: deque[tuple[str, asyncio.Future[PCM] | None]] = field(default_factory=deque)

    def add_text(self, text: str, interruptible: bool | None) -> None:
        flag = self.default_interruptible if interruptible is None else interruptible
        if not self.marks or self.marks[-1][1] != flag:
            self.marks.append((len(self.text), flag))
        self.text += text

    def interruptible(self, start: int, end: int) -> bool:
        """False if any text in ``[start, end)`` came from a non-interruptible chunk."""
        flag = self.default_interruptible
        for offset, value in self.marks:
            if offset >= end:
                break
            if offset <= start:
                flag = value
            elif not value:
                return False
        return flag


class WebhookLLM(llm.LLM[Any]):
    """An ``llm.LLM`` whose every reply is one webhook turn run by ``runner``."""

    def __init__(self, runner: TurnRunner) -> None:
        super().__init__()
        self._runner = runner

    @property
    def model(self) -> str:
        return "webhook"

    @property
    def provider(self) -> str:
        return "relay"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return _WebhookStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _WebhookStream(llm.LLMStream):
    async def _run(self) -> None:
        owner = self._llm
        assert isinstance(owner, WebhookLLM)
        reply_id = uuid.uuid4().hex[:12]

        def emit(text: str) -> None:
            self._event_ch.send_nowait(
                llm.ChatChunk(id=reply_id, delta=llm.ChoiceDelta(role="assistant", content=text))
            )

        await owner._runner(self._chat_ctx, emit)
