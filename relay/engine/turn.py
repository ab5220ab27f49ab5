"""One turn of a call: the caller's words (or keys, or the call's opening) go to the brain as
an ``agent.message``, and the reply's chunks become speech and a :class:`ReplyPlan`.

Runs inside livekit's LLM stream of the reply (:class:`~relay.engine.webhook.WebhookLLM`),
so text handed to ``emit`` is spoken while the brain is still answering. A failed turn
speaks the agent's ``fallbackText``; the ``maxWebhookFailures``-th failure in a row also
plans the call's end (``failed`` / ``webhook_error``). If the brain is slow to start, the
``fillerText`` is spoken once after ``fillerAfterMs``. A reply's text past ``MAX_TURN_TEXT``
characters is not spoken (one ``webhook`` event says so); the call goes on. A ``transfer`` to
a destination the agent does not list (:mod:`relay.transfer`) is not planned: one
``telephony`` event says why, and the caller stays with the agent. A turn may have been
started on the early transcript (:meth:`Turns.speculate`, :mod:`relay.engine.speculation`):
if its words are this turn's, that reply is this turn's; otherwise it is superseded, and the
next request names it (``data.supersedes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

from livekit.agents import llm
from livekit.agents.voice.speech_handle import SpeechHandle

from relay.engine.history import History
from relay.engine.ports import CallSetup, CallSink
from relay.engine.speaking import Speaker, current_speech
from relay.engine.speculation import Speculation, same_words
from relay.engine.speech import UtteranceTiming
from relay.engine.text import join_chunk
from relay.engine.webhook import Action, Emit, ReplyPlan, TurnRecord
from relay.ids import new_id
from relay.logs import get_logger
from relay.transfer import TransferRefused, allowed_destinations, check_transfer
from relay.turns import PLAY_MARK, Brain, TurnError, TurnRequest, agent_message

log = get_logger("relay.engine.turn")

DEFAULT_FALLBACK = "Sorry, I'm having trouble right now. Could you say that again?"
DEFAULT_FILLER = "One moment."
# The most text one turn speaks (minutes of speech): what a reply sends past it is dropped,
# so no reply, however long, costs the call more than this in synthesis and text handling.
MAX_TURN_TEXT = 4000

Say = Callable[..., None]


class Turns:
    """The turns of one call, and what carries over between them (state, failures)."""

    def __init__(
        self,
        setup: CallSetup,
        brain: Brain,
        sink: CallSink,
        history: History,
        speaker: Speaker,
        *,
        after_speech: Callable[[SpeechHandle, ReplyPlan], None],
        unspoken: Callable[[ReplyPlan], object],
    ) -> None:
        agent = setup.agent
        self.setup = setup
        self.brain = brain
        self.sink = sink
        self.history = history
        self.speaker = speaker
        self.interruptible_default = agent.interruptible
        self.fallback_text = agent.fallback_text or DEFAULT_FALLBACK
        self.filler_text = agent.filler_text or DEFAULT_FILLER
        self.filler_after_ms = agent.filler_after_ms
        self.max_failures = agent.max_webhook_failures or 3
        self.transfer_allowed = allowed_destinations(setup.voice_mode, agent)
        self.state: dict[str, Any] | None = None
        self.records: list[TurnRecord] = []
        self.failures = 0
        # What the next turn answers when it is not caller speech: ("open" | "dtmf", value)
        self.pending_input: tuple[str, str] | None = None
        self.dtmf_at = 0.0
        self.last_utterance: UtteranceTiming | None = None
        self._after_speech = after_speech
        self._unspoken = unspoken
        # The reply started on an early transcript (relay.engine.speculation), and the id
        # of the last one the caller went on past, told to the next request (``supersedes``).
        self._speculation: Speculation | None = None
        self.superseded: str | None = None

    async def run(self, chat_ctx: llm.ChatContext, emit: Emit) -> None:
        """One agent.message round trip (or the speculative one, if it asked the same)."""
        speech = current_speech()
        pending, self.pending_input = self.pending_input, None
        user_item = next((m for m in reversed(chat_ctx.messages()) if m.role == "user"), None)
        utterance = None
        if pending is not None:
            kind, value = pending
            input_at = time.perf_counter() if kind == "open" else self.dtmf_at
        else:
            kind, value = "speech", (user_item.text_content or "") if user_item else ""
            utterance = self.last_utterance
            input_at = utterance.speech_ended_at if utterance else time.perf_counter()
        early, self._speculation = self._speculation, None
        if early is not None and not (kind == "speech" and same_words(early.text, value)):
            self._supersede(early)
            early = None
        if early is not None:
            turn = early.turn
            turn.input_at, turn.utterance = input_at, utterance
            turn.started_at = time.perf_counter()
            request = early.request
        else:
            turn = TurnRecord(
                turn_id=new_id("turn"),
                kind=kind,
                input_at=input_at,
                utterance=utterance,
                started_at=time.perf_counter(),
            )
            exclude = {user_item.id} if user_item is not None and kind == "speech" else set()
            confidence = utterance.confidence if utterance else None
            request = self._request(turn, kind, value, confidence, exclude)
        self.records.append(turn)
        plan = ReplyPlan(turn=turn, default_interruptible=self.interruptible_default)
        if speech is not None:
            self.speaker.plans[speech.id] = plan
            speech.add_done_callback(lambda handle: self._after_speech(handle, plan))
        if kind == "dtmf":
            self.history.remember("user", value, dtmf=True)
        spoken = ""

        def say(text: str, interruptible: bool | None = None, *, apart: bool = False) -> None:
            nonlocal spoken
            piece = join_chunk(spoken, text)
            if apart and spoken and not spoken[-1].isspace() and not piece[:1].isspace():
                piece = " " + piece
            if piece:
                plan.add_text(piece, interruptible)
                spoken += piece
                emit(piece)

        setup = self.setup
        turn.webhook = request.timing
        filler = None
        if self.filler_after_ms:
            filler = asyncio.create_task(self._filler(self.filler_after_ms / 1000, say, request))
        room = MAX_TURN_TEXT
        try:
            replies = early.replay() if early is not None else self.brain.reply(request)
            async with contextlib.aclosing(replies) as chunks:
                async for chunk in chunks:
                    if filler is not None:
                        filler.cancel()
                        filler = None
                    if chunk.state is not None:
                        self.state = chunk.state
                        self.sink.conversation_state(chunk.state)
                    if chunk.text and room >= 0:
                        text = chunk.text.replace(PLAY_MARK, "")  # only ``play`` makes one
                        room -= len(text)
                        if room < 0:  # once: nothing more is taken after this
                            text = _cut(text, len(text) + room)
                            self._text_cut(turn)
                        say(text, chunk.interruptible)
                    if chunk.play:
                        plan.plays.append((chunk.play, self._fetch_clip(chunk.play)))
                        plan.add_text(PLAY_MARK, chunk.interruptible)
                        spoken += PLAY_MARK
                        emit(PLAY_MARK)
                    if chunk.dtmf:
                        plan.actions.append((Action.DTMF, chunk.dtmf))
                    if chunk.transfer:
                        self._transfer(plan, chunk.transfer)
                    if chunk.hangup:
                        plan.actions.append((Action.HANGUP, ""))
            self.failures = 0
            if request.timing.ignored_lines:
                self._ignored(turn, request.timing.ignored_lines)
        except Exception as exc:
            # Anything else is our bug, but it must cost this turn only, never the call.
            err = exc if isinstance(exc, TurnError) else TurnError("internal", repr(exc))
            self.failures += 1
            turn.error = err.reason
            self.sink.event(
                "webhook",
                f"webhook turn failed: {err.reason}: {err.detail}",
                level="error",
                data={
                    "turnId": turn.turn_id,
                    "reason": err.reason,
                    "detail": err.detail,
                    "status": err.status,
                    "consecutiveFailures": self.failures,
                },
            )
            log.warning("webhook_turn_failed", call_id=setup.call_id, reason=err.reason)
            say(self.fallback_text, apart=True)
            if self.failures >= self.max_failures:
                plan.actions.append((Action.FAIL, "webhook_error"))
        finally:
            if filler is not None:
                filler.cancel()
        if speech is None:
            self._unspoken(plan)

    def _fetch_clip(self, url: str) -> asyncio.Future[Any] | None:
        return self.speaker.fetch_clip(url) if self.speaker is not None else None

    def speculate(self, text: str, confidence: float) -> None:
        """Start the brain on ``text``, the early transcript of a turn not yet confirmed."""
        early = self._speculation
        if early is not None:
            if same_words(early.text, text):
                return
            self._supersede(early)
        turn = TurnRecord(
            turn_id=new_id("turn"), kind="speech", input_at=time.perf_counter(), speculative=True
        )
        request = self._request(turn, "speech", text, confidence, set(), speculative=True)
        prefetch = functools.partial(self.speaker.prefetch, turn.turn_id)
        self._speculation = Speculation(self.brain, request, turn, text, prefetch)
        log.info("turn_speculating", call_id=self.setup.call_id, turn_id=turn.turn_id)

    def withdraw(self) -> None:
        """The caller went on speaking: the speculative reply is not this turn's."""
        early, self._speculation = self._speculation, None
        if early is not None:
            self._supersede(early)

    async def aclose(self) -> None:
        """The call is over: a speculative request still running is abandoned."""
        early, self._speculation = self._speculation, None
        if early is not None:
            early.withdraw()
            self.speaker.drop_prefetched()
            await early.cancel()

    def _supersede(self, early: Speculation) -> None:
        early.withdraw()
        self.speaker.drop_prefetched(early.turn.turn_id)
        self.superseded = early.turn.turn_id
        log.info("turn_superseded", call_id=self.setup.call_id, turn_id=early.turn.turn_id)

    def _request(
        self,
        turn: TurnRecord,
        kind: str,
        value: str,
        confidence: float | None,
        exclude: set[str],
        *,
        speculative: bool = False,
    ) -> TurnRequest:
        setup = self.setup
        return TurnRequest(
            url=setup.webhook_url or "",
            secrets=setup.webhook_secrets,
            timeout_s=setup.webhook_timeout_ms / 1000,
            payload=self._payload(turn, kind, value, confidence, exclude, speculative),
        )

    def _transfer(self, plan: ReplyPlan, to: str) -> None:
        try:
            plan.actions.append((Action.TRANSFER, check_transfer(to, self.transfer_allowed)))
        except TransferRefused as refused:
            data = {**refused.data(), "turnId": plan.turn.turn_id}
            self.sink.event("telephony", refused.log_message(), level="warning", data=data)
            log.warning("transfer_refused", call_id=self.setup.call_id, reason=refused.reason)

    def _ignored(self, turn: TurnRecord, lines: int) -> None:
        self.sink.event(
            "webhook",
            f"{lines} line(s) after the chunk without 'interim' were ignored: that chunk "
            'closes the turn (mark the chunks before the last one "interim": true)',
            level="warning",
            data={"turnId": turn.turn_id, "reason": "after_final_chunk", "lines": lines},
        )
        log.warning("webhook_lines_ignored", call_id=self.setup.call_id, lines=lines)

    def _text_cut(self, turn: TurnRecord) -> None:
        self.sink.event(
            "webhook",
            f"the reply was longer than {MAX_TURN_TEXT} characters; the rest was not spoken",
            level="warning",
            data={"turnId": turn.turn_id, "reason": "text_too_long", "limit": MAX_TURN_TEXT},
        )
        log.warning("webhook_reply_cut", call_id=self.setup.call_id, turn_id=turn.turn_id)

    async def _filler(self, delay: float, say: Say, request: TurnRequest) -> None:
        await asyncio.sleep(delay)
        if request.timing.first_chunk_at is None:
            say(self.filler_text, apart=True)

    def _payload(
        self,
        turn: TurnRecord,
        kind: str,
        value: str,
        confidence: float | None,
        exclude: set[str],
        speculative: bool,
    ) -> dict[str, Any]:
        setup = self.setup
        data: dict[str, Any] = {
            "callId": setup.call_id,
            "turnId": turn.turn_id,
            "numberId": setup.number_id,
            "from": setup.from_number,
            "to": setup.to_number,
            "direction": setup.direction,
        }
        if kind == "dtmf":
            data["dtmf"] = value
        else:
            data["transcript"] = value
            data["confidence"] = confidence
        if speculative:
            data["speculative"] = True
        if self.superseded is not None:
            data["supersedes"], self.superseded = self.superseded, None
        # What the call was created with, so a webhook need not look the call up.
        data["metadata"] = setup.metadata
        data["variables"] = setup.agent.variables
        return agent_message(
            channel="voice",
            agent_id=setup.agent_id,
            data=data,
            state=self.state,
            history=self.history.recent(exclude),
        )


def _cut(text: str, size: int) -> str:
    """The first ``size`` characters of ``text``, back to the last word boundary if any."""
    kept = text[:size]
    space = kept.rfind(" ")
    return kept[:space] if space > 0 and not text[size].isspace() else kept
