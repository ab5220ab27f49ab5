"""One call: a livekit ``AgentSession`` wired to the caller line, a brain and a call sink.

Turn flow: caller audio -> :class:`CallAudioInput` -> Silero VAD + :class:`EarlySTT` (which
decides the end of the turn) -> :class:`WebhookLLM` running one :class:`Turns` round trip
(the webhook or the hosted LLM, :mod:`relay.turns`) -> :class:`Speaker` (speaks each
sentence as soon as it is complete) -> :class:`CallAudioOutput` (20 ms frames to the line
in real time). Barge-in: the session's VAD interrupts the speech, the output stops and
clears the line, the brain's reply is closed, and the agent's turn is kept as the words the
caller heard (by their share of the played audio), marked interrupted.

Choices where the protocol is silent:
* ``firstSpeaker: agent`` with a greeting speaks it; without one, the brain gets a turn with
  an empty transcript so it can open the call.
* DTMF digits are gathered into one turn until ``#`` or ``RELAY_DTMF_GATHER_MS`` of quiet;
  the webhook sees ``data.dtmf`` and no transcript; the transcript stores a ``dtmf`` segment.
* ``hangup``, ``transfer`` and ``dtmf`` of a reply run after the reply has been spoken, in
  that chunk order; a reply the caller interrupted does not hang up or transfer.
* ``recordingEnabled``: both sides are tapped into a :class:`StereoRecorder` on the call's
  clock (the one transcript offsets use); the sink is handed the closed file after the call.

The session stores nothing: what happens goes to the :class:`CallSink`, and how the call
ended is what :meth:`CallSession.wait` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import aiohttp
from livekit import rtc
from livekit.agents import Agent, AgentSession, llm
from livekit.agents.voice import ModelSettings
from livekit.agents.voice.events import (
    AgentStateChangedEvent,
    CloseEvent,
    ConversationItemAddedEvent,
    ErrorEvent,
    UserStateChangedEvent,
)
from livekit.agents.voice.speech_handle import SpeechHandle

from relay.config import Settings
from relay.engine import speech, timers
from relay.engine.audio_io import CallAudioInput, CallAudioOutput, session_rate
from relay.engine.backchannel import Backchannels, CallFloor
from relay.engine.codecs import PCM
from relay.engine.history import History
from relay.engine.playback import PLAY_MARK, Clips, words_only
from relay.engine.ports import CallEnd, CallerLine, CallSetup, CallSink, LiveView
from relay.engine.recording import StereoRecorder
from relay.engine.speaking import Speaker
from relay.engine.speech import CallVAD, EarlySTT, UtteranceTiming, call_speech
from relay.engine.turn import Turns
from relay.engine.turn_end import sounds_unfinished
from relay.engine.webhook import Action, ReplyPlan, WebhookLLM
from relay.logs import get_logger
from relay.turns import Brain, HostedBrain, WebhookBrain, hosted_backend

log = get_logger("relay.engine.session")

CLOSE_TIMEOUT_S = 5.0


class _RelayAgent(Agent):
    def __init__(self, speaker: Speaker) -> None:
        super().__init__(instructions="")
        self._speaker = speaker

    async def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> AsyncIterator[rtc.AudioFrame]:
        async for frame in self._speaker.speak(text):
            yield frame


class CallSession:
    """A running call; the :class:`relay.engine.ports.CallHandle` a transport holds."""

    def __init__(
        self,
        setup: CallSetup,
        line: CallerLine,
        sink: CallSink,
        http: aiohttp.ClientSession,
        settings: Settings,
        *,
        clips: Clips | None = None,
    ) -> None:
        self.call_id = setup.call_id
        self.setup = setup
        self.line = line
        self.sink = sink
        self.settings = settings
        agent = setup.agent
        self.started_at = time.time()
        self._clock_origin = time.perf_counter()  # started_at on the monotonic clock
        self.history = History(sink, self.started_at)
        self._dtmf = ""
        self._dtmf_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outcome: asyncio.Future[CallEnd] = asyncio.get_running_loop().create_future()
        self._ending = False
        self._user_speaking = False
        self._agent_state = "initializing"
        self.activity = timers.Activity()
        rate = session_rate(line.sample_rate)
        self.audio_in = CallAudioInput(sample_rate=rate)
        self.recording: StereoRecorder | None = None
        # Hosted mode: the built-in LLM answers instead of the webhook.
        self.brain: Brain
        if setup.voice_mode == "hosted":
            self.brain = HostedBrain(
                setup,
                hosted_backend(settings),
                http,
                on_tool=self._tool_segment,
                on_event=lambda source, message, level, data: sink.event(
                    source, message, level=level, data=data
                ),
                max_tokens=settings.llm_max_tokens,
                max_tool_rounds=settings.llm_max_tool_rounds,
            )
        else:
            self.brain = WebhookBrain(http)
        recognizer, self.tts, speech_problem = call_speech(
            voice=agent.voice,
            language=agent.language,
            stt=agent.stt,
            tts=agent.tts,
            default_stt=settings.stt,
            default_tts=settings.tts,
            sample_rate=line.sample_rate,
        )
        if speech_problem:
            sink.event("speech", speech_problem, level="warning", data={})
        # Hosted replies come in whole clauses (relay.turns.hosted.phrase): none to wait for.
        pause = 0.0 if setup.voice_mode == "hosted" else settings.text_pause_ms / 1000
        clips = clips or Clips()
        self.speaker = Speaker(
            self.tts,
            sink,
            pause=pause,
            playing=self._current_speech,
            clip=lambda url, rate: clips.get(http, setup.project_id, url, rate),
        )
        # A web page's line shows the call live: transcript lines, agent state, the end.
        self.live = line if isinstance(line, LiveView) else None
        self.audio_out = CallAudioOutput(
            line,
            on_marker=self.speaker.on_marker,
            on_line_error=self._on_line_error,
            on_text=self._on_agent_words if self.live is not None else None,
        )
        if agent.recording_enabled:
            self._open_recording(rate)
        self.turns = Turns(
            setup,
            self.brain,
            sink,
            self.history,
            self.speaker,
            after_speech=self._after_speech,
            unspoken=lambda plan: self._spawn(self._run_actions(plan, interrupted=False)),
        )
        vad = CallVAD(speech.vad(min_silence_s=settings.early_stt_silence_ms / 1000))
        self.floor = CallFloor(
            Backchannels.for_agent(
                agent.interruption_sensitivity, agent.language, agent.backchannel_words
            ),
            self.audio_out,
            playing=self._current_speech,
            speaking=lambda: self._agent_state == "speaking",
            cut=self._cut,
            heard=self._backchannel,
        )
        self.stt = EarlySTT(
            recognizer,
            vad=vad,
            endpointing_delay=settings.endpointing_delay_ms / 1000,
            on_utterance=self._on_utterance,
            floor=self.floor,
            unfinished=lambda text: sounds_unfinished(text, agent.language),
            unfinished_hold=agent.unfinished_turn_ms / 1000,
        )
        # Hosted replies have no side effects before they are confirmed; a webhook's may.
        if setup.voice_mode == "hosted" or agent.speculative_turns:
            self.stt.speculate = self._speculate
            self.stt.withdraw = self.turns.withdraw
        self.session: AgentSession[None] = AgentSession(
            vad=vad,
            stt=self.stt,
            llm=WebhookLLM(self.turns.run),
            tts=self.tts,
            turn_handling={
                "turn_detection": "stt",
                "endpointing": {"min_delay": 0.0, "max_delay": 0.0},
                "interruption": {
                    "enabled": agent.interruptible,
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
        self.activity.touch()
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        delay = 0.0 if digit == "#" else self.settings.dtmf_gather_ms / 1000
        self._dtmf_task = self._spawn(self._dtmf_turn(delay))

    def caller_hung_up(self) -> None:
        self._spawn(self._finish(CallEnd("completed"), hangup_line=False))

    async def end(self, reason: str = "completed") -> None:
        await self._finish(
            CallEnd("completed") if reason == "completed" else CallEnd("failed", reason)
        )

    async def leave(self, message: str | None, detail: str) -> None:
        if self._ending:
            return
        if message:
            self.sink.event("engine", "leaving a message", data={"text": message})
            with contextlib.suppress(Exception):
                await self.session.interrupt(force=True)
            speech = self.session.say(message, allow_interruptions=False)
            with contextlib.suppress(Exception):
                await speech.wait_for_playout()
        await self._finish(CallEnd("completed", detail=detail))

    async def wait(self) -> CallEnd:
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
        if self.recording is not None:
            self.sink.recording_started(self.recording)
        await session.start(agent=_RelayAgent(self.speaker), record=False)
        self.brain.start()
        agent = self.setup.agent
        if agent.max_duration_seconds:
            self._spawn(timers.max_duration(float(agent.max_duration_seconds), self._finish))
        if agent.inactivity_timeout_seconds:
            self._spawn(
                timers.inactivity(
                    float(agent.inactivity_timeout_seconds),
                    agent.inactivity_action,
                    activity=self.activity,
                    busy=self._busy,
                    ending=lambda: self._ending,
                    reprompt=lambda text: self.session.say(text, allow_interruptions=True),
                    sink=self.sink,
                    end=self._finish,
                )
            )
        if agent.first_speaker == "agent":
            if agent.greeting:
                session.say(agent.greeting, allow_interruptions=agent.interruptible)
            else:
                self.turns.pending_input = ("open", "")
                session.generate_reply()

    def _open_recording(self, rate: int) -> None:
        try:
            self.recording = StereoRecorder(
                self.sink.recording_dir(), self.call_id, rate=rate, origin=self._clock_origin
            )
        except (OSError, ValueError) as exc:  # the call goes on unrecorded
            log.error("recording_not_started", call_id=self.call_id, error=repr(exc))
            self.sink.event("engine", f"the recording could not start: {exc}", level="error")
            return
        self.audio_in.tap = self.recording.caller
        self.audio_out.tap = self.recording.agent

    def _current_speech(self) -> SpeechHandle | None:
        return self.session.current_speech

    def _cut(self, why: str) -> bool:
        current = self.session.current_speech
        if current is None or current.interrupted or not current.allow_interruptions:
            return False
        current.interrupt()
        log.info("caller_interrupted", call_id=self.call_id, why=why)
        return True

    def _backchannel(self, text: str, timing: UtteranceTiming) -> None:
        """An acknowledgement the agent talked on through: caller speech, but no turn."""
        now_wall, now = time.time(), time.perf_counter()
        ms = self.history.ms
        start = ms(now_wall - (now - timing.speech_started_at))
        end = ms(now_wall - (now - timing.speech_ended_at))
        self.history.segment("user", text, start, end, data={"backchannel": True})
        log.info("caller_backchannel", call_id=self.call_id, text=text)
        self.activity.touch()
        if self.live is not None:
            self.live.live_event(
                {"type": "transcript", "role": "user", "text": text, "final": True,
                 "backchannel": True}
            )  # fmt: skip

    def _speculate(self, text: str, confidence: float) -> None:
        """An early transcript while the agent is silent: start its reply speculatively."""
        if self._ending or self._dtmf or self.session.current_speech is not None:
            return
        self.turns.speculate(text, confidence)

    def _busy(self) -> bool:
        return (
            self._user_speaking
            or self._agent_state in ("speaking", "thinking")
            or self.audio_out.playing
            or bool(self._dtmf)
        )

    # ------------------------------------------------------------------ turns

    async def _dtmf_turn(self, delay: float) -> None:
        await asyncio.sleep(delay)
        digits, self._dtmf = self._dtmf, ""
        if not digits or self._ending:
            return
        self.turns.dtmf_at = time.perf_counter()
        now = self.history.ms(time.time())
        self.history.segment("dtmf", digits, now, now, data={"digits": digits})
        current = self.session.current_speech
        if current is not None and current.allow_interruptions:
            current.interrupt()
        self.turns.pending_input = ("dtmf", digits)
        self.session.generate_reply()

    def _after_speech(self, handle: SpeechHandle, plan: ReplyPlan) -> None:
        self.speaker.plans.pop(handle.id, None)
        self.speaker.store_turn(plan.turn)
        if handle.interrupted and not self._ending:
            self._report_cut(handle, plan)
        self.activity.touch()
        if plan.actions:
            self._spawn(self._run_actions(plan, interrupted=handle.interrupted))

    def _report_cut(self, handle: SpeechHandle, plan: ReplyPlan) -> None:
        said = [
            item
            for item in handle.chat_items
            if isinstance(item, llm.ChatMessage) and item.role == "assistant"
        ]
        if not said:  # cut before a word of it played
            return
        item = said[-1]
        started = item.metrics.get("started_speaking_at")
        stopped = min(item.metrics.get("stopped_speaking_at") or 0.0, self._audio_stopped_at())
        spoken_ms = int((stopped - started) * 1000) if started and stopped else 0
        heard = words_only(item.text_content or "")
        self.sink.agent_interrupted(plan.turn.turn_id, heard, spoken_ms)

    def _audio_stopped_at(self) -> float:
        """When (wall clock) the last agent frame went to the line: a cut reply stopped
        there, which is earlier than its interruption when it was paused first."""
        last = self.audio_out.last_frame_at
        return time.time() - (time.perf_counter() - last) + 0.02 if last else time.time()

    async def _run_actions(self, plan: ReplyPlan, *, interrupted: bool) -> None:
        for action, arg in plan.actions:
            if self._ending:
                return
            if action is Action.FAIL:
                await self._finish(
                    CallEnd(
                        "failed",
                        arg,
                        detail=f"{self.turns.failures} webhook turns failed in a row",
                        data={"consecutiveFailures": self.turns.failures},
                    )
                )
                return
            if interrupted:
                self.sink.event("engine", f"{action} skipped: the caller interrupted the reply")
                continue
            if action is Action.DTMF:
                await self._line_call(self.line.send_dtmf(arg), "send_dtmf")
                self.sink.event("engine", f"sent DTMF {arg}", data={"dtmf": arg})
            elif action is Action.TRANSFER:
                self.sink.event("telephony", f"transfer to {arg}", data={"to": arg})
                await self._line_call(self.line.transfer(arg), "transfer")
                await self._finish(
                    CallEnd("completed", detail=f"transferred to {arg}", data={"to": arg}),
                    hangup_line=False,
                )
                return
            elif action is Action.HANGUP:
                await self._finish(CallEnd("completed", detail="the agent hung up"))
                return

    async def _line_call(self, call: Any, what: str) -> None:
        try:
            await call
        except Exception as exc:
            self.sink.event(
                "telephony", f"{what} failed: {exc!r}", level="error", data={"action": what}
            )

    # ------------------------------------------------------------------ session events

    def _on_utterance(self, timing: UtteranceTiming) -> None:
        self.turns.last_utterance = timing

    def _on_item(self, ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, llm.ChatMessage) or item.role not in ("user", "assistant"):
            return
        text = item.text_content or ""
        if PLAY_MARK in text:  # a clip says no words: a reply of clips alone is no line
            text = words_only(text)
            if not text:
                return
        metrics = item.metrics
        end = metrics.get("stopped_speaking_at") or ev.created_at
        if item.role == "assistant" and item.interrupted:
            end = min(end, self._audio_stopped_at())
        start = metrics.get("started_speaking_at") or end
        ms = self.history.ms
        if item.role == "user":
            self.history.remember("user", text, item_id=item.id, at=start)
            self.history.segment("user", text, ms(start), ms(end))
        else:
            self.history.remember("agent", text, interrupted=item.interrupted, at=start)
            self.history.segment("agent", text, ms(start), ms(end), item.interrupted)
        if self.live is not None and text:
            self.live.live_event(
                {
                    "type": "transcript",
                    "role": "user" if item.role == "user" else "agent",
                    "text": text,
                    "final": True,
                    "interrupted": bool(item.interrupted),
                }
            )

    def _tool_segment(self, text: str, start: float, end: float, data: dict[str, Any]) -> None:
        ms = self.history.ms
        self.history.segment("tool", text, ms(start), ms(end), data=data)

    def _on_user_state(self, ev: UserStateChangedEvent) -> None:
        self._user_speaking = ev.new_state == "speaking"
        self.activity.touch()

    def _on_agent_state(self, ev: AgentStateChangedEvent) -> None:
        self._agent_state = ev.new_state
        self.activity.touch()
        if self.live is not None and ev.new_state in ("listening", "thinking", "speaking"):
            self.live.live_event({"type": "agent_state", "state": ev.new_state})

    def _on_agent_words(self, text: str) -> None:
        assert self.live is not None
        self.live.live_event({"type": "transcript", "role": "agent", "text": text, "final": False})

    def _on_error(self, ev: ErrorEvent) -> None:
        recoverable = bool(getattr(ev.error, "recoverable", True))
        self.sink.event(
            "engine",
            f"{type(ev.source).__name__} error: {ev.error!r}"[:500],
            level="warning" if recoverable else "error",
        )

    def _on_close(self, ev: CloseEvent) -> None:
        if not self._ending:
            failed = ev.error is not None
            detail = f"voice session closed: {ev.reason}"
            end = (
                CallEnd("failed", "agent_error", detail)
                if failed
                else CallEnd("completed", None, detail)
            )
            self._spawn(self._finish(end))

    def _on_line_error(self, exc: BaseException) -> None:
        if not self._ending:
            log.info("line_gone", call_id=self.call_id, error=repr(exc))
            self._spawn(self._finish(CallEnd("completed"), hangup_line=False))

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
                self._finish(CallEnd("failed", "agent_error", f"engine error: {exc!r}"[:500]))
            )

    async def _finish(self, end: CallEnd, *, hangup_line: bool = True) -> None:
        if self._ending:
            await self.wait()
            return
        self._ending = True
        if self.live is not None:
            self.live.live_event({"type": "ended", "status": end.status, "reason": end.reason})
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
            await self.turns.aclose()
            await self.brain.aclose()
            for turn in self.turns.records:
                self.speaker.store_turn(turn)
            await self.sink.flush()
            if self.recording is not None:
                self.recording.close()
                self.sink.recording_finished(self.recording)
        finally:
            if not self._outcome.done():
                self._outcome.set_result(end)
