"""The call's VAD: one Silero stream per call, heard by EarlySTT and by livekit's session."""

from __future__ import annotations

import asyncio

import numpy as np
from livekit import rtc
from livekit.plugins import silero

from relay.engine.speech import CallVAD, InlineSileroVAD, vad

RATE = 8000


def _frames(pcm: np.ndarray) -> list[rtc.AudioFrame]:
    return [
        rtc.AudioFrame(
            data=pcm[i : i + 160].tobytes(),
            sample_rate=RATE,
            num_channels=1,
            samples_per_channel=160,
        )
        for i in range(0, len(pcm) - 159, 160)
    ]


async def _events(stream, frames: list[rtc.AudioFrame]) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []

    async def read() -> None:
        async for ev in stream:
            seen.append((ev.type.name, ev.samples_index))
            if hasattr(stream, "publish"):  # a CallVAD source: its reader passes events on
                stream.publish(ev)

    reader = asyncio.create_task(read())
    for frame in frames:
        stream.push_frame(frame)
        await asyncio.sleep(0)
    stream.end_input()
    await reader
    return seen


def _speech(voice) -> np.ndarray:
    quiet = np.zeros(RATE // 2, np.int16)
    return np.concatenate([quiet, voice("I would like a table for two."), quiet, quiet])


async def test_inline_silero_hears_exactly_what_silero_hears(voice):
    frames = _frames(_speech(voice))
    options = dict(min_silence_duration=0.15, min_speech_duration=0.05, sample_rate=RATE)
    stock = await _events(silero.VAD.load(**options).stream(), frames)
    inline = await _events(InlineSileroVAD.load(**options).stream(), frames)
    assert inline == stock
    assert [t for t, _ in stock if t != "INFERENCE_DONE"] == ["START_OF_SPEECH", "END_OF_SPEECH"]


async def test_one_stream_per_call_heard_by_its_listeners(voice):
    frames = _frames(_speech(voice))
    call_vad = CallVAD(vad(min_silence_s=0.15))
    listener = call_vad.stream()
    gone = call_vad.stream()
    await gone.aclose()  # a listener closed early hears nothing more and breaks nothing
    heard: list[tuple[str, int]] = []

    async def listen() -> None:
        async for ev in listener:
            heard.append((ev.type.name, ev.samples_index))

    listening = asyncio.create_task(listen())
    silence = _frames(np.zeros(len(frames) * 160, np.int16))
    for frame in silence:  # what the session pushes to its listener is not analysed
        listener.push_frame(frame)
    source_events = await _events(call_vad.source(), frames)
    await asyncio.sleep(0.05)
    listener.end_input()
    await listener.aclose()
    listening.cancel()
    assert [t for t, _ in source_events if t != "INFERENCE_DONE"] == [
        "START_OF_SPEECH",
        "END_OF_SPEECH",
    ]
    assert heard == source_events
