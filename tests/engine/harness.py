"""Test harness for the voice engine: a recording caller line, a real-time caller, a webhook.

Nothing here stands in for relay code: the line is what a transport would be, the caller is
what a phone would send, the webhook is a developer's server on a real local socket.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from relay.agent_config import AgentConfig
from relay.engine import speech
from relay.engine.codecs import resample, ulaw_decode, ulaw_encode
from relay.engine.ports import CallSetup
from relay.ids import new_id
from relay.store.db import Database
from relay.store.models import Call, Project

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RATE = 8000
FRAME = RATE // 50
LOUD = 300.0
ONSET = 60.0  # a frame this loud starts an utterance


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def piper_voice(text: str, rate: int = RATE) -> np.ndarray:
    """Caller speech as a phone delivers it: Piper, resampled, through G.711 mu-law. The
    same every run (no synthesis noise), so a test hears what it heard last time."""
    pcm = np.concatenate(speech.piper_sentences(text, steady=True))
    return ulaw_decode(ulaw_encode(resample(pcm, speech.piper_rate(), rate)))


def espeak_voice(text: str, rate: int = RATE) -> np.ndarray:
    wav = subprocess.run(
        [speech.espeak_binary(), "--stdout", "-v", "en-us", "-s", "150", text],
        capture_output=True,
        check=True,
    ).stdout
    pcm, src = speech.espeak_wav_to_pcm(wav)
    return ulaw_decode(ulaw_encode(resample(pcm, src, rate)))


def transcribe(pcm: np.ndarray, rate: int = RATE) -> str:
    return speech.whisper_transcribe_standard(resample(pcm, rate, 16000))[0]


class RecordingLine:
    """A CallerLine that keeps everything the engine sends, with arrival times."""

    def __init__(self, sample_rate: int = RATE) -> None:
        self.sample_rate = sample_rate
        self.frames: list[tuple[float, np.ndarray]] = []
        self.clears: list[float] = []
        self.dtmf: list[str] = []
        self.transfers: list[str] = []
        self.hangups: list[float] = []
        self.audio_event = asyncio.Event()

    async def send_audio(self, pcm: np.ndarray) -> None:
        self.frames.append((time.perf_counter(), pcm.copy()))
        self.audio_event.set()

    async def clear(self) -> None:
        self.clears.append(time.perf_counter())

    async def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)

    async def transfer(self, to: str) -> None:
        self.transfers.append(to)

    async def hangup(self) -> None:
        self.hangups.append(time.perf_counter())

    def loud_frames(self, since: float = 0.0) -> list[tuple[float, np.ndarray]]:
        return [(t, f) for t, f in self.frames if t >= since and rms(f) > LOUD]

    def first_loud_after(self, since: float) -> float | None:
        loud = self.loud_frames(since)
        return loud[0][0] if loud else None

    def audio(self, since: float = 0.0, until: float = float("inf")) -> np.ndarray:
        parts = [f for t, f in self.frames if since <= t < until]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def bursts(self, gap: float = 0.5) -> list[tuple[float, float, np.ndarray]]:
        """Agent utterances: runs of frames separated by more than ``gap`` of no frames."""
        out: list[tuple[float, float, list[np.ndarray]]] = []
        for t, f in self.frames:
            if out and t - out[-1][1] <= gap:
                out[-1] = (out[-1][0], t, [*out[-1][2], f])
            else:
                out.append((t, t, [f]))
        return [(a, b, np.concatenate(fs)) for a, b, fs in out]

    async def wait_audio(self, since: float, within: float = 20.0) -> float:
        """Wait for the first loud frame written after ``since``; returns its time."""
        deadline = time.perf_counter() + within
        while time.perf_counter() < deadline:
            found = self.first_loud_after(since)
            if found is not None:
                return found
            self.audio_event.clear()
            try:
                await asyncio.wait_for(self.audio_event.wait(), 0.2)
            except TimeoutError:
                pass
        raise AssertionError(f"no agent audio within {within} s")

    async def wait_quiet(self, quiet: float = 0.8, within: float = 30.0) -> None:
        """Wait until the engine has written no frame for ``quiet`` seconds."""
        deadline = time.perf_counter() + within
        while time.perf_counter() < deadline:
            last = self.frames[-1][0] if self.frames else 0.0
            if time.perf_counter() - last >= quiet:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the agent never went quiet")


class Caller:
    """Pushes 20 ms frames into a call at real-time pace: silence, or what it is told to say."""

    def __init__(self, handle: Any, rate: int = RATE) -> None:
        self.handle = handle
        self.rate = rate
        self.frame = rate // 50
        self._queue: list[np.ndarray] = []
        self._done: asyncio.Event = asyncio.Event()
        self._done.set()
        self.last_loud_at = 0.0
        self.first_loud_at = 0.0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        silence = np.zeros(self.frame, np.int16)
        deadline = time.monotonic()
        while True:
            if self._queue:
                pcm = self._queue.pop(0)
                self.handle.push_audio(pcm, self.rate)
                level = rms(pcm)
                now = time.perf_counter()
                if level > ONSET and not self.first_loud_at:
                    self.first_loud_at = now
                if level > LOUD:
                    self.last_loud_at = now
                if not self._queue:
                    self._done.set()
            else:
                self.handle.push_audio(silence, self.rate)
            deadline = max(deadline + 0.02, time.monotonic() - 0.1)  # a phone does not burst
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    async def say(self, pcm: np.ndarray) -> float:
        """Speak ``pcm`` in real time; returns when the last frame was pushed (the time of
        the last loud frame, i.e. the end of speech)."""
        pad = (-len(pcm)) % self.frame
        pcm = np.concatenate([pcm, np.zeros(pad, np.int16)])
        self.first_loud_at = 0.0
        self._done.clear()
        self._queue.extend(pcm[i : i + self.frame] for i in range(0, len(pcm), self.frame))
        await self._done.wait()
        return self.last_loud_at

    def start_saying(self, pcm: np.ndarray) -> asyncio.Task[float]:
        return asyncio.create_task(self.say(pcm))

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


Reply = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


class Hook:
    """The developer's webhook: records every verified request, answers with ``reply``."""

    def __init__(self, reply: Reply | None = None) -> None:
        self.reply = reply or text_reply("Okay.")
        self.requests: list[dict[str, Any]] = []
        self.verified: list[bool] = []
        self.aborted: list[int] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            Webhook(SECRET).verify(body, dict(request.headers))
            self.verified.append(True)
        except Exception:
            self.verified.append(False)
        payload = json.loads(body)
        self.requests.append(payload)
        self.arrived.set()
        index = len(self.requests) - 1
        try:
            return await self.reply(request, payload)
        except (ConnectionResetError, asyncio.CancelledError):
            self.aborted.append(index)
            raise

    async def wait_request(self, count: int, within: float = 20.0) -> dict[str, Any]:
        deadline = time.perf_counter() + within
        while len(self.requests) < count:
            if time.perf_counter() > deadline:
                raise AssertionError(f"webhook got {len(self.requests)} requests, not {count}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 0.2)
            except TimeoutError:
                pass
        return self.requests[count - 1]


def text_reply(text: str, **extra: Any) -> Reply:
    async def reply(request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"text": text, **extra})

    return reply


async def ndjson_start(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    return resp


async def ndjson_line(resp: web.StreamResponse, obj: dict[str, Any]) -> None:
    await resp.write(json.dumps(obj).encode() + b"\n")


async def start_hook(aiohttp_server: Any, hook: Hook) -> str:
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook"))


async def make_call(db: Database) -> str:
    """A live call row, as a transport would have created it before starting the engine."""
    call_id = new_id("call")
    async with db.session() as session:
        project = Project(id=new_id("proj"), name="proj-" + call_id)
        session.add(project)
        await session.flush()
        session.add(
            Call(
                id=call_id,
                project_id=project.id,
                direction="inbound",
                connection_type="sim",
                from_number="+61412345678",
                to_number="+61255501234",
                status="in_progress",
                voice_mode="webhook",
            )
        )
    return call_id


def call_setup(
    call_id: str,
    url: str,
    *,
    timeout_ms: int = 5000,
    metadata: dict[str, Any] | None = None,
    **agent: Any,
) -> CallSetup:
    settings: dict[str, Any] = {
        "first_speaker": "user",
        "greeting": None,
        "interruptible": True,
        "inactivity_timeout_seconds": None,
        "inactivity_action": "reprompt",
        "max_duration_seconds": None,
        "stt": "whisper",
        "tts": "espeak",
        "fallback_text": None,
        "filler_after_ms": None,
        "filler_text": None,
        "max_webhook_failures": 3,
    }
    settings.update(agent)
    return CallSetup(
        call_id=call_id,
        project_id="proj",
        agent_id="agt_test",
        number_id="num_test",
        direction="inbound",
        channel="voice",
        from_number="+61412345678",
        to_number="+61255501234",
        voice_mode="webhook",
        webhook_url=url,
        webhook_secrets=(SECRET,),
        webhook_timeout_ms=timeout_ms,
        agent=AgentConfig.from_stored(settings),
        metadata=metadata or {},
    )
