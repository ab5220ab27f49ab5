"""One call: a livekit ``AgentSession`` wired to the caller line and the developer's webhook.

Turn flow: caller audio -> :class:`CallAudioInput` -> Silero VAD + :class:`EarlySTT` (which
decides the end of the turn) -> :class:`WebhookLLM` (one signed ``agent.message`` per turn) ->
our ``tts_node`` (speaks each sentence as soon as it is complete) -> :class:`CallAudioOutput`
(20 ms frames to the line in real time). Barge-in: the session's VAD interrupts the speech,
the output stops and clears the line, the webhook request is closed, and the agent's turn is
kept as the words the caller heard (by their share of the played audio), marked interrupted.

Choices where the protocol is silent:
* ``firstSpeaker: agent`` with a greeting speaks it; without one, the webhook gets a turn with
  an empty transcript so it can open the call.
* DTMF digits are gathered into one turn until ``#`` or ``RELAY_DTMF_GATHER_MS`` of quiet;
  the webhook sees ``data.dtmf`` and no transcript; the transcript stores a ``dtmf`` segment.
* ``hangup``, ``transfer`` and ``dtmf`` of a reply run after the reply has been spoken, in
  that chunk order; a reply the caller interrupted does not hang up or transfer.
* A failed turn speaks ``fallbackText``; the ``maxWebhookFailures``-th failure in a row speaks
  it and ends the call ``failed`` / ``webhook_error``.
* Inactivity ``reprompt`` asks once ("Are you still there?"), then ends the call on the next
  timeout; ``hangup`` ends at the first. Both end ``completed`` with an ``inactivity`` event.
* ``maxDurationSeconds`` ends the call ``completed`` with a ``max_duration`` event: the call
  did not fail, it reached the limit its agent set.
* ``recordingEnabled``: both sides are tapped into a :class:`StereoRecorder` on the call's
  clock (the one transcript offsets use); the file is encoded after the call, in the
  background (:func:`relay.calls.recordings.finish`), and the call's end never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import aiohttp
from livekit import rtc
from livekit.agents import Agent, AgentSession, llm, tts
from livekit.agents.voice import ModelSettings
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    CloseEvent,
    ConversationItemAddedEvent,
    ErrorEvent,
    UserStateChangedEvent,
)
from livekit.agents.voice.speech_handle import SpeechHandle

from relay.calls import recordings as recording_store
from relay.calls.records import CallRecorder, Segment, end_call
from relay.config import Settings
from relay.engine import models
from relay.engine.audio_io import CallAudioInput, CallAudioOutput, session_rate
from relay.engine.codecs import PCM
from relay.engine.hosted import HostedBrain, hosted_backend
from relay.engine.ports import CallerLine, CallSetup
from relay.engine.recording import StereoRecorder
from relay.engine.speech import EarlySTT, LocalTTS, UtteranceTiming, local_stt, local_tts
from relay.engine.text import join_chunk, segments, speakable
from relay.engine.turns import TurnError, TurnRequest, stream_turn
from relay.engine.vad import CallVAD
from relay.engine.webhook import Emit, ReplyPlan, TurnRecord, WebhookLLM
from relay.ids import new_id
from relay.logs import get_logger
from relay.store.db import Database
from relay.timefmt import iso

log = get_logger("relay.engine.session")

DEFAULT_FALLBACK = "Sorry, I'm having trouble right now. Could you say that again?"
DEFAULT_FILLER = "One moment."
REPROMPT = "Are you still there?"
HISTORY_LIMIT = 20
CLOSE_TIMEOUT_S = 5.0
# A later sentence of a reply is due this long before the audio ahead of it runs out
# (Piper makes a sentence in ~0.1-0.3 s).
SYNTHESIS_MARGIN_S = 0.5


def current_speech() -> SpeechHandle | None:
    """The speech a livekit pipeline task is producing (livekit keeps it in a contextvar)."""
    from livekit.agents.voice.agent_activity import _SpeechHandleContextVar

    return _SpeechHandleContextVar.get(None)


class _RelayAgent(Agent):
    def __init__(self, call: CallSession) -> None:
        super().__init__(instructions="")
        self._call = call

    async def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> AsyncIterator[rtc.AudioFrame]:
        async for frame in self._call.speak(text):
            yield frame


class CallSession:
    """A running call; the :class:`relay.engine.ports.CallHandle` a transport holds."""

    def __init__(
        self,
        setup: CallSetup,
        line: CallerLine,
        db: Database,
        http: aiohttp.ClientSession,
        settings: Settings,
        jobs: recording_store.RecordingJobs | None = None,
    ) -> None:
        self.call_id = setup.call_id
        self.setup = setup
        self.line = line
        self.http = http
        self.settings = settings
        agent = setup.agent
        self.interruptible_default = bool(agent.get("interruptible", True))
        self.fallback_text = agent.get("fallback_text") or DEFAULT_FALLBACK
        self.filler_text = agent.get("filler_text") or DEFAULT_FILLER
        self.filler_after_ms: int | None = agent.get("filler_after_ms")
        self.max_failures = int(agent.get("max_webhook_failures") or 3)
        self.recorder = CallRecorder(db, setup.call_id)
        self.db = db
        self.state: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.turns: list[TurnRecord] = []
        self.failures = 0
        self.started_at = time.time()
        self._clock_origin = time.perf_counter()  # started_at on the monotonic clock
        self.jobs = jobs or recording_store.RecordingJobs()
        self._plans: dict[str, ReplyPlan] = {}
        self._pending_input: tuple[str, str] | None = None
        self._last_utterance: UtteranceTiming | None = None
        self._segment_seq = 0
        self._dtmf = ""
        self._dtmf_at = 0.0
        self._dtmf_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outcome: asyncio.Future[tuple[str, str | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._ending = False
        self._user_speaking = False
        self._agent_state = "initializing"
        self._last_activity = time.monotonic()
        self._reprompted = False
        rate = session_rate(line.sample_rate)
        self.audio_in = CallAudioInput(sample_rate=rate)
        self.audio_out = CallAudioOutput(
            line, on_marker=self._on_marker, on_line_error=self._on_line_error
        )
        self.recording: StereoRecorder | None = None
        if agent.get("recording_enabled"):
            self._open_recording(rate)
        self.tts: tts.TTS[Any] = local_tts(
            agent.get("tts") or settings.tts, sample_rate=line.sample_rate
        )
        vad = CallVAD(models.vad(min_silence_s=settings.early_stt_silence_ms / 1000))
        self.stt = EarlySTT(
            local_stt(agent.get("stt") or settings.stt),
            vad=vad,
            endpointing_delay=settings.endpointing_delay_ms / 1000,
            on_utterance=self._on_utterance,
        )
        # Hosted mode (relay.engine.hosted): the built-in LLM answers instead of the webhook.
        self.hosted: HostedBrain | None = None
        if setup.voice_mode == "hosted":
            self.hosted = HostedBrain(
                setup,
                hosted_backend(settings),
                http,
                on_tool=self._tool_segment,
                max_tokens=settings.llm_max_tokens,
                max_tool_rounds=settings.llm_max_tool_rounds,
            )
        self.session: AgentSession[None] = AgentSession(
            vad=vad,
            stt=self.stt,
            llm=WebhookLLM(self._webhook_turn),
            tts=self.tts,
            turn_handling={
                "turn_detection": "stt",
                "endpointing": {"min_delay": 0.0, "max_delay": 0.0},
                "interruption": {
                    "enabled": self.interruptible_default,
                    "mode": "vad",
                    "min_duration": settings.barge_in_min_ms / 1000,
                    "resume_false_interruption": False,
                    "discard_audio_if_uninterruptible": True,
                },
                "preemptive_generation": {"enabled": False},
            },
            tts_text_transforms=None,
            aec_warmup_duration=None,
            user_away_timeout=None,
            session_close_transcript_timeout=0.0,
        )

    # ------------------------------------------------------------------ CallHandle

    def push_audio(self, pcm: PCM, sample_rate: int) -> None:
        if not self._ending:
            self.audio_in.push(pcm, sample_rate)

    def push_dtmf(self, digit: str) -> None:
        if self._ending or digit not in "0123456789*#ABCDabcd":
            return
        self._dtmf += digit
        self._activity()
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        delay = 0.0 if digit == "#" else self.settings.dtmf_gather_ms / 1000
        self._dtmf_task = self._spawn(self._dtmf_turn(delay))

    def caller_hung_up(self) -> None:
        self._spawn(self._finish("completed", None, hangup_line=False))

    async def end(self, reason: str = "completed") -> None:
        status = "completed" if reason == "completed" else "failed"
        await self._finish(status, None if status == "completed" else reason)

    async def wait(self) -> tuple[str, str | None]:
        return await asyncio.shield(self._outcome)

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        session = self.session
        session.input.audio = self.audio_in
        session.output.audio = self.audio_out
        session.on("conversation_item_added", self._on_item)
        session.on("user_state_changed", self._on_user_state)
        session.on("agent_state_changed", self._on_agent_state)
        session.on("error", self._on_error)
        session.on("close", self._on_close)
        self.recorder.start()
        if self.recording is not None:
            rec = self.recording

            async def pending_row(db_session: Any) -> None:
                await recording_store.open_row(
                    db_session, self.settings, self.call_id, self.setup.project_id, rec
                )

            self.recorder.write(pending_row)
        await session.start(agent=_RelayAgent(self), record=False)
        if self.hosted is not None:
            self.hosted.start()
        agent = self.setup.agent
        max_duration = agent.get("max_duration_seconds")
        if max_duration:
            self._spawn(self._max_duration(float(max_duration)))
        if agent.get("inactivity_timeout_seconds"):
            self._spawn(self._inactivity(float(agent["inactivity_timeout_seconds"])))
        if agent.get("first_speaker", "agent") == "agent":
            greeting = agent.get("greeting")
            if greeting:
                session.say(greeting, allow_interruptions=self.interruptible_default)
            else:
                self._pending_input = ("open", "")
                session.generate_reply()

    def _open_recording(self, rate: int) -> None:
        try:
            self.recording = StereoRecorder(
                recording_store.recordings_dir(self.settings, self.setup.project_id),
                self.call_id,
                rate=rate,
                origin=self._clock_origin,
            )
        except (OSError, ValueError) as exc:  # the call goes on unrecorded
            log.error("recording_not_started", call_id=self.call_id, error=repr(exc))
            self.recorder.event("engine", f"the recording could not start: {exc}", level="error")
            return
        self.audio_in.tap = self.recording.caller
        self.audio_out.tap = self.recording.agent

    # ------------------------------------------------------------------ turns

    async def _webhook_turn(self, chat_ctx: llm.ChatContext, emit: Emit) -> None:
        """One agent.message round trip; runs inside the livekit LLM stream of the reply."""
        speech = current_speech()
        pending, self._pending_input = self._pending_input, None
        user_item = next((m for m in reversed(chat_ctx.messages()) if m.role == "user"), None)
        utterance = None
        if pending is not None:
            kind, value = pending
            input_at = time.perf_counter() if kind == "open" else self._dtmf_at
        else:
            kind, value = "speech", (user_item.text_content or "") if user_item else ""
            utterance = self._last_utterance
            input_at = utterance.speech_ended_at if utterance else time.perf_counter()
        turn = TurnRecord(
            turn_id=new_id("turn"),
            kind=kind,
            input_at=input_at,
            utterance=utterance,
            started_at=time.perf_counter(),
        )
        self.turns.append(turn)
        plan = ReplyPlan(turn=turn, default_interruptible=self.interruptible_default)
        if speech is not None:
            self._plans[speech.id] = plan
            speech.add_done_callback(lambda handle: self._after_speech(handle, plan))
        exclude = {user_item.id} if user_item is not None and kind == "speech" else set()
        payload = self._payload(turn, kind, value, utterance, exclude)
        if kind == "dtmf":
            self._remember("user", value, dtmf=True)
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

        request = TurnRequest(
            url=self.setup.webhook_url or "",
            secrets=self.setup.webhook_secrets,
            timeout_s=self.setup.webhook_timeout_ms / 1000,
            payload=payload,
        )
        turn.webhook = request.timing
        filler = None
        if self.filler_after_ms:
            filler = asyncio.create_task(self._filler(self.filler_after_ms / 1000, say, request))
        try:
            replies = (
                self.hosted.reply(request)
                if self.hosted is not None
                else stream_turn(self.http, request)
            )
            async with contextlib.aclosing(replies) as chunks:
                async for chunk in chunks:
                    if filler is not None:
                        filler.cancel()
                        filler = None
                    if chunk.state is not None:
                        self.state = chunk.state
                        self.recorder.conversation_state(chunk.state)
                    if chunk.text:
                        say(chunk.text, chunk.interruptible)
                    if chunk.dtmf:
                        plan.actions.append(("dtmf", chunk.dtmf))
                    if chunk.transfer:
                        plan.actions.append(("transfer", chunk.transfer))
                    if chunk.hangup:
                        plan.actions.append(("hangup", ""))
            self.failures = 0
        except Exception as exc:
            # Anything else is our bug, but it must cost this turn only, never the call.
            err = exc if isinstance(exc, TurnError) else TurnError("internal", repr(exc))
            self.failures += 1
            turn.error = err.reason
            self.recorder.event(
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
            log.warning("webhook_turn_failed", call_id=self.call_id, reason=err.reason)
            say(self.fallback_text, apart=True)
            if self.failures >= self.max_failures:
                plan.actions.append(("fail", "webhook_error"))
        finally:
            if filler is not None:
                filler.cancel()
        if speech is None:
            self._spawn(self._run_actions(plan, interrupted=False))

    async def _filler(self, delay: float, say: Any, request: TurnRequest) -> None:
        await asyncio.sleep(delay)
        if request.timing.first_chunk_at is None:
            say(self.filler_text, apart=True)

    def _payload(
        self,
        turn: TurnRecord,
        kind: str,
        value: str,
        utterance: UtteranceTiming | None,
        exclude: set[str],
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
            data["confidence"] = utterance.confidence if utterance else None
        history = [
            {k: v for k, v in entry.items() if k != "_id"}
            for entry in self.history
            if entry.get("_id") not in exclude
        ]
        return {
            "event": "agent.message",
            "channel": "voice",
            "timestamp": iso(),
            "agentId": setup.agent_id,
            "data": data,
            "conversationState": self.state if self.state is not None else {},
            "recentHistory": history[-HISTORY_LIMIT:],
        }

    async def _dtmf_turn(self, delay: float) -> None:
        await asyncio.sleep(delay)
        digits, self._dtmf = self._dtmf, ""
        if not digits or self._ending:
            return
        self._dtmf_at = time.perf_counter()
        now = self._ms(time.time())
        self._segment("dtmf", digits, now, now, data={"digits": digits})
        current = self.session.current_speech
        if current is not None and current.allow_interruptions:
            current.interrupt()
        self._pending_input = ("dtmf", digits)
        self.session.generate_reply()

    # ------------------------------------------------------------------ speaking

    async def speak(self, text: AsyncIterable[str]) -> AsyncIterator[rtc.AudioFrame]:
        """The session's tts_node: segments as early as possible, marked for the output."""
        speech = current_speech()
        offset = 0
        # Hosted replies come in whole clauses (relay.engine.hosted.phrase): none to wait for.
        pause = 0.0 if self.hosted is not None else self.settings.text_pause_ms / 1000
        playing_from: float | None = None  # time.monotonic() of this reply's first audio
        audio_s = 0.0  # audio made for this reply so far
        async for segment in segments(text, pause=pause, quick_start=True):
            start, offset = offset, offset + len(segment)
            words = segment.strip()
            if not speakable(words):
                continue
            plan = self._plans.get(speech.id) if speech is not None else None
            marker: dict[str, Any] = {"text": segment}
            if plan is not None:
                marker["interruptible"] = plan.interruptible(start, offset)
                if plan.turn.tts_started_at is None:
                    plan.turn.tts_started_at = time.perf_counter()
                    marker["turn"] = plan.turn
            first = True
            # The first segment is what the caller waits for; each later one is needed
            # when the audio before it has played (earliest deadline first).
            synthesis: tts.ChunkedStream
            if playing_from is not None and isinstance(self.tts, LocalTTS):
                due = playing_from + audio_s - SYNTHESIS_MARGIN_S
                synthesis = self.tts.synthesize(words, deadline=due)
            else:
                synthesis = self.tts.synthesize(words)
            async with synthesis as stream:
                async for event in stream:
                    frame = event.frame
                    if playing_from is None:
                        playing_from = time.monotonic()
                    audio_s += frame.duration
                    if first:
                        first = False
                        if plan is not None and plan.turn.tts_first_audio_at is None:
                            plan.turn.tts_first_audio_at = time.perf_counter()
                        frame.userdata.update(marker)
                    yield frame

    def _on_marker(self, marker: dict[str, Any], sent_at: float) -> None:
        if "interruptible" in marker:
            speech = self.session.current_speech
            if speech is not None and not speech.interrupted:
                speech.allow_interruptions = bool(marker["interruptible"])
        turn = marker.get("turn")
        if isinstance(turn, TurnRecord) and turn.first_frame_at is None:
            turn.first_frame_at = sent_at
            self._store_turn(turn)

    def _store_turn(self, turn: TurnRecord) -> None:
        if turn.stored:
            return
        turn.stored = True
        self.recorder.turn_metrics(turn.turn_id, turn.values())
        turn.observe()

    def _after_speech(self, handle: SpeechHandle, plan: ReplyPlan) -> None:
        self._plans.pop(handle.id, None)
        self._store_turn(plan.turn)
        self._activity()
        if plan.actions:
            self._spawn(self._run_actions(plan, interrupted=handle.interrupted))

    async def _run_actions(self, plan: ReplyPlan, *, interrupted: bool) -> None:
        for action, arg in plan.actions:
            if self._ending:
                return
            if action == "fail":
                await self._finish(
                    "failed",
                    arg,
                    event=f"{self.failures} webhook turns failed in a row",
                    data={"consecutiveFailures": self.failures},
                    by_engine=True,
                )
                return
            if interrupted:
                self.recorder.event("engine", f"{action} skipped: the caller interrupted the reply")
                continue
            if action == "dtmf":
                await self._line_call(self.line.send_dtmf(arg), "send_dtmf")
                self.recorder.event("engine", f"sent DTMF {arg}", data={"dtmf": arg})
            elif action == "transfer":
                self.recorder.event("telephony", f"transfer to {arg}", data={"to": arg})
                await self._line_call(self.line.transfer(arg), "transfer")
                await self._finish(
                    "completed",
                    None,
                    hangup_line=False,
                    event=f"transferred to {arg}",
                    data={"to": arg},
                    by_engine=True,
                )
                return
            elif action == "hangup":
                await self._finish("completed", None, event="the agent hung up", by_engine=True)
                return

    async def _line_call(self, call: Any, what: str) -> None:
        try:
            await call
        except Exception as exc:
            self.recorder.event(
                "telephony", f"{what} failed: {exc!r}", level="error", data={"action": what}
            )

    # ------------------------------------------------------------------ session events

    def _on_utterance(self, timing: UtteranceTiming) -> None:
        self._last_utterance = timing

    def _on_item(self, ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, llm.ChatMessage) or item.role not in ("user", "assistant"):
            return
        text = item.text_content or ""
        metrics = item.metrics
        end = metrics.get("stopped_speaking_at") or ev.created_at
        start = metrics.get("started_speaking_at") or end
        if item.role == "user":
            self._remember("user", text, item_id=item.id, at=start)
            self._segment("user", text, self._ms(start), self._ms(end))
        else:
            self._remember("agent", text, interrupted=item.interrupted, at=start)
            self._segment("agent", text, self._ms(start), self._ms(end), item.interrupted)

    def _remember(
        self,
        role: str,
        text: str,
        *,
        interrupted: bool = False,
        dtmf: bool = False,
        item_id: str | None = None,
        at: float | None = None,
    ) -> None:
        entry: dict[str, Any] = {"role": role, "content": text, "channel": "voice", "at": iso(at)}
        if interrupted:
            entry["interrupted"] = True
        if dtmf:
            entry["dtmf"] = True
        if item_id:
            entry["_id"] = item_id
        self.history.append(entry)
        if len(self.history) > HISTORY_LIMIT * 2:
            del self.history[:HISTORY_LIMIT]

    def _segment(
        self,
        speaker: str,
        text: str,
        start_ms: int,
        end_ms: int,
        interrupted: bool = False,
        data: dict[str, Any] | None = None,
    ) -> None:
        self._segment_seq += 1
        end_ms = max(start_ms, end_ms)
        self.recorder.segment(
            Segment(self._segment_seq, speaker, text, start_ms, end_ms, interrupted, data)
        )

    def _tool_segment(self, text: str, start: float, end: float, data: dict[str, Any]) -> None:
        self._segment("tool", text, self._ms(start), self._ms(end), data=data)

    def _ms(self, wall: float) -> int:
        return max(0, int((wall - self.started_at) * 1000))

    def _on_user_state(self, ev: UserStateChangedEvent) -> None:
        self._user_speaking = ev.new_state == "speaking"
        self._activity()

    def _on_agent_state(self, ev: AgentStateChangedEvent) -> None:
        self._agent_state = ev.new_state
        self._activity()

    def _on_error(self, ev: ErrorEvent) -> None:
        recoverable = bool(getattr(ev.error, "recoverable", True))
        self.recorder.event(
            "engine",
            f"{type(ev.source).__name__} error: {ev.error!r}"[:500],
            level="warning" if recoverable else "error",
        )

    def _on_close(self, ev: CloseEvent) -> None:
        if not self._ending:
            failed = ev.error is not None
            self._spawn(
                self._finish(
                    "failed" if failed else "completed",
                    "agent_error" if failed else None,
                    event=f"voice session closed: {ev.reason}",
                    by_engine=True,
                )
            )

    def _on_line_error(self, exc: BaseException) -> None:
        if not self._ending:
            log.info("line_gone", call_id=self.call_id, error=repr(exc))
            self._spawn(self._finish("completed", None, hangup_line=False))

    # ------------------------------------------------------------------ timers

    def _activity(self) -> None:
        self._last_activity = time.monotonic()

    async def _inactivity(self, limit: float) -> None:
        action = self.setup.agent.get("inactivity_action", "reprompt")
        while not self._ending:
            await asyncio.sleep(min(0.25, limit / 4))
            busy = (
                self._user_speaking
                or self._agent_state in ("speaking", "thinking")
                or self.audio_out.playing
                or bool(self._dtmf)
            )
            if busy:
                self._activity()
                continue
            if time.monotonic() - self._last_activity < limit:
                continue
            if action == "reprompt" and not self._reprompted:
                self._reprompted = True
                self.recorder.event("engine", "caller inactive: reprompting")
                self.session.say(REPROMPT, allow_interruptions=True)
                self._activity()
                continue
            await self._finish(
                "completed",
                None,
                event=f"no caller activity for {limit:g} s",
                data={"reason": "inactivity"},
                by_engine=True,
            )
            return

    async def _max_duration(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._finish(
            "completed",
            None,
            event=f"max_duration: the call reached {seconds:g} s",
            data={"reason": "max_duration"},
            by_engine=True,
        )

    # ------------------------------------------------------------------ the end

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._ending:
            exc = task.exception()
            log.error("call_task_failed", call_id=self.call_id, error=repr(exc))
            self._spawn(
                self._finish(
                    "failed", "agent_error", event=f"engine error: {exc!r}"[:500], by_engine=True
                )
            )

    async def _finish(
        self,
        status: str,
        reason: str | None,
        *,
        hangup_line: bool = True,
        event: str | None = None,
        data: dict[str, Any] | None = None,
        by_engine: bool = False,
    ) -> None:
        if self._ending:
            await self.wait()
            return
        self._ending = True
        try:
            if hangup_line:
                with contextlib.suppress(Exception):
                    await self.line.hangup()
            self.audio_in.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.session.aclose()
            await self.audio_out.aclose()
            current = asyncio.current_task()
            for task in list(self._tasks):
                if task is not current:
                    task.cancel()
            if self.hosted is not None:
                await self.hosted.aclose()
            for turn in self.turns:
                self._store_turn(turn)
            await self.recorder.flush()
            if self.recording is not None:
                self.recording.close()
                self.jobs.spawn(recording_store.finish(self.db, self.call_id, self.recording))
            if by_engine:
                try:
                    async with self.db.session() as session:
                        await end_call(
                            session, self.call_id, status, reason=reason, event=event, data=data
                        )
                except Exception as exc:
                    log.error("end_call_failed", call_id=self.call_id, error=repr(exc))
        finally:
            if not self._outcome.done():
                self._outcome.set_result((status, reason))
