"""The simulated handset's calls: it places a call and plays both the carrier and the caller.

It asks the relay for the call the way a carrier does (``POST /carriers/sim/voice``), opens
the Twilio Media Streams socket it is given and speaks the carrier side of that protocol:
20 ms mu-law frames in real time (silence between utterances, as a phone line does). Each
line is spoken with a local TTS once the agent has finished its answer; what the agent says
is transcribed with Whisper. Timings are measured where a caller would notice them:

* end of speech: when the caller's last loud frame went out;
* first agent audio: when the first loud frame of the answer came in.

Tests, ``bench/`` and ``relay phone call`` all use :class:`SimHandset`::

    report = await SimHandset("http://127.0.0.1:8080", api_key).call(
        "+14155550142", ["I'd like to book a table.", Dtmf("1"), "Thanks, bye."]
    )
    for turn in report.turns:
        print(turn.said, turn.latency_ms, turn.heard)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import subprocess
import time
import wave
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from relay.engine import speech
from relay.engine.codecs import PCM, resample, ulaw_decode, ulaw_encode
from relay.transports import twilio_protocol as tp

RATE = 8000
FRAME = RATE // 50  # 20 ms
LOUD_RMS = 300.0  # a frame louder than this is speech, on either side
SILENT_FRAME = b"\xff" * FRAME  # mu-law zero


class HandsetError(Exception):
    """The relay refused the call (``code`` is the relay's error code) or could not be
    reached."""

    def __init__(self, message: str, code: str = "handset_error") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Dtmf:
    """Keys to press as one turn (sent as Media Streams ``dtmf`` events)."""

    digits: str


Line = str | Path | Dtmf


@dataclass
class Turn:
    said: str
    end_of_speech_at: float = 0.0
    first_agent_audio_at: float | None = None
    heard: str = ""
    barged_in: bool = False

    @property
    def latency_ms(self) -> float | None:
        """End of the caller's speech to the first agent audio, measured at the caller."""
        if self.first_agent_audio_at is None:
            return None
        return round((self.first_agent_audio_at - self.end_of_speech_at) * 1000, 1)


@dataclass
class CallReport:
    call_id: str
    greeting: str = ""
    turns: list[Turn] = field(default_factory=list)
    clears: int = 0
    ended_by: Literal["caller", "relay"] = "caller"
    duration_s: float = 0.0
    # When each media frame of the relay arrived (``time.perf_counter()``), for pacing
    # figures; not part of :meth:`as_dict`.
    frames_at: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("frames_at")
        for turn, raw in zip(self.turns, out["turns"], strict=True):
            raw["latencyMs"] = turn.latency_ms
            for key in ("end_of_speech_at", "first_agent_audio_at"):
                raw.pop(key)
        return out


def _rms(pcm: PCM) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def synthesize(text: str, voice: str = "piper", *, steady: bool = False) -> PCM:
    """Caller speech at 8 kHz with the local TTS (``piper`` or ``espeak``); ``steady``: the
    same audio every run (Piper without its sampling noise), for comparing runs."""
    if voice == "espeak":
        wav = subprocess.run(
            [speech.espeak_binary(), "--stdout", "-v", "en-us", "-s", "160", text],
            capture_output=True,
            check=True,
        ).stdout
        pcm, rate = speech.espeak_wav_to_pcm(wav)
        return resample(pcm, rate, RATE)
    sentences = speech.piper_sentences(text, steady=steady)
    pause = np.zeros(speech.piper_rate() // 5, dtype=np.int16)
    joined = np.concatenate([part for s in sentences for part in (s, pause)][:-1])
    return resample(joined, speech.piper_rate(), RATE)


def read_wav(path: Path) -> PCM:
    """A 16-bit WAV file (any rate, mono or stereo) as 8 kHz mono."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise HandsetError(f"{path}: only 16-bit PCM WAV files are supported")
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        channels, rate = wav.getnchannels(), wav.getframerate()
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return resample(pcm, rate, RATE)


def transcribe(pcm: PCM, rate: int = RATE) -> str:
    """What Whisper hears in ``rate`` audio (blocking)."""
    if _rms(pcm) < LOUD_RMS / 3:
        return ""
    return speech.whisper_transcribe_standard(resample(pcm, rate, 16000))[0]


class MediaLine:
    """The handset's side of one media socket: a paced sender and a receiver. It speaks
    Twilio Media Streams; a carrier fake with another protocol overrides the ``*_frame``
    methods and :meth:`on_frame` (:mod:`relay.handset.fake_telnyx`,
    :mod:`relay.handset.fake_plivo`)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, stream_sid: str) -> None:
        self.ws = ws
        self.sid = stream_sid
        # ("media", mu-law frame, loud?) or ("dtmf", digit, True)
        self.outbox: deque[tuple[str, bytes | str, bool]] = deque()
        self.spoken = asyncio.Event()
        self.spoken.set()
        self.last_loud_sent = 0.0
        self.loud_sent: list[float] = []
        self.received: list[tuple[float, PCM]] = []
        self.loud_received: list[float] = []
        self.clears: list[float] = []
        self.closed = asyncio.Event()
        self.heard_loud = asyncio.Event()

    def media_frame(self, data: bytes) -> str:
        return tp.media(self.sid, data)

    def dtmf_frame(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "streamSid": self.sid, "dtmf": {"digit": digit}})

    def mark_frame(self, name: str) -> str:
        return tp.mark(self.sid, name)

    def stop_frame(self) -> str:
        return json.dumps({"event": "stop", "streamSid": self.sid})

    def say(self, pcm: PCM) -> None:
        pcm = np.concatenate([pcm, np.zeros((-len(pcm)) % FRAME, dtype=np.int16)])
        frames = (pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME))
        self.outbox.extend(("media", ulaw_encode(f), _rms(f) > LOUD_RMS) for f in frames)
        self.spoken.clear()

    def press(self, digits: str) -> None:
        for digit in digits:
            self.outbox.append(("dtmf", digit, True))
            self.outbox.extend([("media", SILENT_FRAME, False)] * 5)  # 100 ms between keys
        self.spoken.clear()

    async def send(self) -> None:
        deadline = time.perf_counter()
        while not self.ws.closed:
            kind, data, loud = (
                self.outbox.popleft() if self.outbox else ("media", SILENT_FRAME, False)
            )
            if kind == "dtmf":
                assert isinstance(data, str)
                await self.ws.send_str(self.dtmf_frame(data))
                self.last_loud_sent = time.perf_counter()
                continue
            assert isinstance(data, bytes)
            await self.ws.send_str(self.media_frame(data))
            if loud:
                self.last_loud_sent = time.perf_counter()
                self.loud_sent.append(self.last_loud_sent)
            if not self.outbox:
                self.spoken.set()
            # A phone never bursts: if we fell behind, we skip ahead rather than catch up.
            deadline = max(deadline + 0.02, time.perf_counter() - 0.1)
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))

    async def receive(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                await self.on_frame(json.loads(msg.data), time.perf_counter())
        finally:
            self.closed.set()

    async def on_frame(self, frame: dict[str, Any], now: float) -> None:
        event = frame.get("event")
        if event == "media":
            self.heard(now, ulaw_decode(base64.b64decode(frame["media"]["payload"])))
        elif event == "clear":
            self.clears.append(now)
        elif event == "mark":  # played as soon as it arrives: echo it, as Twilio does
            await self.ws.send_str(self.mark_frame(frame["mark"]["name"]))

    def heard(self, now: float, pcm: PCM) -> None:
        self.received.append((now, pcm))
        if _rms(pcm) > LOUD_RMS:
            self.loud_received.append(now)
            self.heard_loud.set()

    def first_loud_after(self, t: float) -> float | None:
        return next((x for x in self.loud_received if x > t), None)

    def audio_between(self, start: float, end: float) -> PCM:
        parts = [pcm for t, pcm in self.received if start < t <= end]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


class SimHandset:
    """A simulated phone on the sim carrier.

    Args:
        relay_url: the relay's base URL, e.g. ``http://127.0.0.1:8080``.
        api_key: a secret key of the project that owns the called number.
        voice: the caller's TTS, ``piper`` (natural) or ``espeak`` (fast).
        listen: transcribe what the agent says (Whisper); timings need no transcription.
        answer_silence_ms: quiet after agent audio that counts as "the agent has finished".
        answer_timeout_s: how long to wait for an answer before moving on.
        greeting_timeout_s: how long to wait for a greeting before speaking first.
    """

    def __init__(
        self,
        relay_url: str,
        api_key: str,
        *,
        from_number: str = "+15005550006",
        voice: str = "piper",
        listen: bool = True,
        answer_silence_ms: int = 1200,
        answer_timeout_s: float = 20.0,
        greeting_timeout_s: float = 10.0,
    ) -> None:
        self.relay_url = relay_url.rstrip("/")
        self.api_key = api_key
        self.from_number = from_number
        self.voice = voice
        self.listen = listen
        self.answer_silence = answer_silence_ms / 1000
        self.answer_timeout = answer_timeout_s
        self.greeting_timeout = greeting_timeout_s

    async def _audio(self, line: Line) -> tuple[str, PCM | Dtmf]:
        loop = asyncio.get_running_loop()
        if isinstance(line, Dtmf):
            return f"[keys {line.digits}]", line
        if isinstance(line, Path):
            return f"[{line.name}]", await loop.run_in_executor(None, read_wav, line)
        return line, await loop.run_in_executor(None, synthesize, line, self.voice)

    async def _place(self, http: aiohttp.ClientSession, number: str) -> dict[str, Any]:
        try:
            resp = await http.post(
                f"{self.relay_url}/carriers/sim/voice",
                json={"to": number, "from": self.from_number},
                headers={"Authorization": f"Bearer {self.api_key}"},
            )
            body = await resp.json(content_type=None)
        except (aiohttp.ClientError, ValueError) as exc:
            raise HandsetError(f"cannot reach the relay at {self.relay_url}: {exc}") from exc
        if resp.status != 201:
            error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
            raise HandsetError(
                error.get("message", f"HTTP {resp.status}"), error.get("code", "http_error")
            )
        placed: dict[str, Any] = body
        return placed

    def _media_url(self, placed: dict[str, Any]) -> str:
        # Connect where the caller reached the relay; the path and token are the relay's.
        base = urlsplit(self.relay_url)
        scheme = "wss" if base.scheme == "https" else "ws"
        return f"{scheme}://{base.netloc}{urlsplit(placed['mediaUrl']).path}"

    async def call(
        self, number: str, lines: Sequence[Line], *, barge_in_after_ms: int | None = None
    ) -> CallReport:
        """Call ``number``, say each line after the agent's answer (or ``barge_in_after_ms``
        into it), then hang up once the last answer is over."""
        audio = [await self._audio(line) for line in lines]
        async with aiohttp.ClientSession() as http:
            call_id, line = await self._connect(http, number)
            return await self.talk(line, audio, call_id, barge_in_after_ms)

    async def answer(
        self,
        http: aiohttp.ClientSession,
        stream_url: str,
        start: dict[str, Any],
        lines: Sequence[Line],
        *,
        barge_in_after_ms: int | None = None,
    ) -> CallReport:
        """Be the callee of a call a carrier connected to the relay: open the media socket at
        ``stream_url`` (Twilio's ``<Stream url>``), send Twilio's ``connected`` and ``start``
        (``start`` is its body: ``callSid``, ``customParameters``...), then talk as
        :meth:`call` does. (:mod:`relay.handset.fake_twilio` answers outbound calls so.)"""
        audio = [await self._audio(line) for line in lines]
        line = await self._open(http, stream_url, None, start)
        call_id = str(start["customParameters"].get("callId", ""))
        return await self.talk(line, audio, call_id, barge_in_after_ms)

    async def _open(
        self,
        http: aiohttp.ClientSession,
        url: str,
        token: str | None,
        start: dict[str, Any],
    ) -> MediaLine:
        """A Twilio media socket, opened and started as Twilio does."""
        params = {"token": token} if token else None
        ws = await http.ws_connect(url, params=params, autoping=True)
        line = MediaLine(ws, str(start["streamSid"]))
        await ws.send_str(
            json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        )
        frame = {"event": "start", "sequenceNumber": "1", "start": start, "streamSid": line.sid}
        await ws.send_str(json.dumps(frame))
        return line

    async def _connect(self, http: aiohttp.ClientSession, number: str) -> tuple[str, MediaLine]:
        """Place the call and open its media socket: (call id, the line)."""
        placed = await self._place(http, number)
        start = _start(placed["token"], placed["callId"], "CAsim" + placed["callId"][5:])
        line = await self._open(http, self._media_url(placed), placed["token"], start)
        return str(placed["callId"]), line

    async def _hang_up(self, line: MediaLine) -> None:
        """The caller's side ends the stream (its protocol's ``stop``), before the close."""
        await line.ws.send_str(line.stop_frame())

    @contextlib.asynccontextmanager
    async def connected(self, number: str) -> AsyncIterator[tuple[str, MediaLine]]:
        """Call ``number`` and hand over the line for a script of one's own (``bench/
        quality.py``): ``(call id, line)``; the call is hung up on leaving."""
        async with aiohttp.ClientSession() as http:
            call_id, line = await self._connect(http, number)
            tasks = [asyncio.create_task(line.send()), asyncio.create_task(line.receive())]
            try:
                yield call_id, line
            finally:
                if not line.ws.closed:
                    await self._hang_up(line)
                    await line.ws.close()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _converse(
        self,
        line: MediaLine,
        audio: list[tuple[str, PCM | Dtmf]],
        report: CallReport,
        barge_in_after_ms: int | None,
    ) -> None:
        await self._until_agent_done(line, since=0.0, first_within=self.greeting_timeout)
        for index, (said, pcm) in enumerate(audio):
            if line.closed.is_set():
                report.ended_by = "relay"
                return
            turn = Turn(said=said)
            report.turns.append(turn)
            started = time.perf_counter()
            if isinstance(pcm, Dtmf):
                line.press(pcm.digits)
            else:
                line.say(pcm)
            await _either(line.spoken.wait(), line.closed.wait())
            turn.end_of_speech_at = line.last_loud_sent or started
            last = index == len(audio) - 1
            if barge_in_after_ms is not None and not last:
                first = await self._first_agent_audio(
                    line, turn.end_of_speech_at, self.answer_timeout
                )
                if first is not None:
                    await asyncio.sleep(max(0.0, first + barge_in_after_ms / 1000 - _now()))
                    turn.barged_in = True
                continue
            await self._until_agent_done(
                line, since=turn.end_of_speech_at, first_within=self.answer_timeout
            )
        if line.closed.is_set():
            report.ended_by = "relay"

    async def _first_agent_audio(
        self, line: MediaLine, since: float, within: float
    ) -> float | None:
        deadline = _now() + within
        while (first := line.first_loud_after(since)) is None:
            if line.closed.is_set() or _now() > deadline:
                return None
            line.heard_loud.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(line.heard_loud.wait(), 0.05)
        return first

    async def _until_agent_done(
        self, line: MediaLine, *, since: float, first_within: float
    ) -> None:
        """Wait for the agent's answer to start (at most ``first_within``), then to end."""
        if await self._first_agent_audio(line, since, first_within) is None:
            return
        while not line.closed.is_set():
            quiet_since = line.loud_received[-1]
            if _now() - quiet_since >= self.answer_silence:
                return
            await asyncio.sleep(0.05)

    async def _hearing(self, line: MediaLine, report: CallReport, started: float) -> None:
        """Per turn: when the answer started, and (``listen``) what it said. A turn's answer
        is what came in between its end of speech and the next one's."""
        loop = asyncio.get_running_loop()
        marks = [t.end_of_speech_at for t in report.turns] + [float("inf")]
        for i, turn in enumerate(report.turns):
            first = line.first_loud_after(turn.end_of_speech_at)
            turn.first_agent_audio_at = (
                first if first is not None and first <= marks[i + 1] else None
            )
        if not self.listen:
            return
        greeting = line.audio_between(started, marks[0])
        report.greeting = await loop.run_in_executor(None, transcribe, greeting)
        for i, turn in enumerate(report.turns):
            heard = line.audio_between(marks[i], marks[i + 1])
            turn.heard = await loop.run_in_executor(None, transcribe, heard)

    async def prepare(self, lines: Sequence[Line]) -> list[tuple[str, PCM | Dtmf]]:
        """The audio of each line, synthesized ahead of a call."""
        return [await self._audio(line) for line in lines]

    async def talk(
        self,
        line: MediaLine,
        audio: list[tuple[str, PCM | Dtmf]],
        call_id: str,
        barge_in_after_ms: int | None = None,
    ) -> CallReport:
        """Converse over a media socket a carrier fake opened and started in its own protocol
        (``line`` writes its frames: :mod:`relay.handset.fake_telnyx`); hang up (its
        ``stop``, close) once the last answer is over."""
        report = CallReport(call_id=call_id)
        started = time.perf_counter()
        tasks = [asyncio.create_task(line.send()), asyncio.create_task(line.receive())]
        try:
            await self._converse(line, audio, report, barge_in_after_ms)
        finally:
            if not line.ws.closed:
                await self._hang_up(line)
                await line.ws.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        report.duration_s = round(time.perf_counter() - started, 2)
        report.clears = len(line.clears)
        report.frames_at = [t for t, _ in line.received]
        await self._hearing(line, report, started)
        return report


def _now() -> float:
    return time.perf_counter()


async def _either(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _start(token: str, call_id: str, call_sid: str, account_sid: str = "ACsim") -> dict[str, Any]:
    """The body of Twilio's ``start`` frame, with the relay's ``<Parameter>`` s."""
    return {
        "streamSid": "MZ" + secrets.token_hex(16),
        "accountSid": account_sid,
        "callSid": call_sid,
        "tracks": ["inbound"],
        "customParameters": {"callId": call_id, "token": token},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
    }
