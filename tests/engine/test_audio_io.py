"""The paced output: real-time 20 ms frames, barge-in stops at once, the words heard."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from livekit import rtc

from relay.engine.audio_io import CallAudioInput, CallAudioOutput, heard_part
from tests.engine.harness import RecordingLine


def frame(seconds: float, rate: int = 8000, **userdata) -> rtc.AudioFrame:
    pcm = (np.sin(np.arange(int(rate * seconds)) / 3) * 8000).astype(np.int16)
    return rtc.AudioFrame(
        data=pcm.tobytes(),
        sample_rate=rate,
        num_channels=1,
        samples_per_channel=len(pcm),
        userdata=userdata or None,
    )


async def test_frames_are_paced_in_real_time_without_drift():
    line = RecordingLine()
    out = CallAudioOutput(line)
    finished = []
    out.on("playback_finished", finished.append)
    await out.capture_frame(frame(1.0))
    out.flush()
    await out.wait_for_playout()
    await out.aclose()
    times = [t for t, _ in line.frames]
    assert len(times) == 50 and all(len(f) == 160 for _, f in line.frames)
    assert 0.95 < times[-1] - times[0] < 1.05  # 49 periods of 20 ms
    assert finished[0].interrupted is False and abs(finished[0].playback_position - 1.0) < 0.01


async def test_audio_that_comes_late_is_not_sent_in_a_burst():
    line = RecordingLine()
    out = CallAudioOutput(line)
    await out.capture_frame(frame(0.2))
    await asyncio.sleep(0.35)  # 10 frames go out in 0.2 s, then 0.15 s with nothing to send
    await out.capture_frame(frame(0.2))
    out.flush()
    await out.wait_for_playout()
    await out.aclose()
    times = [t for t, _ in line.frames]
    assert len(times) == 20
    after_stall = [b - a for a, b in zip(times[10:], times[11:], strict=False)]
    # Catching up on the 0.15 s stall would send about 7 frames back to back.
    assert sum(gap < 0.008 for gap in after_stall) <= 1, after_stall


async def test_clear_buffer_stops_at_once_clears_the_line_and_reports_heard_words():
    line = RecordingLine()
    markers = []
    out = CallAudioOutput(line, on_marker=lambda m, t: markers.append(m))
    finished = []
    out.on("playback_finished", finished.append)
    await out.capture_frame(frame(1.0, text="one two three four ", turn="t1"))
    await out.capture_frame(frame(1.0, text="five six seven eight"))
    out.flush()
    await asyncio.sleep(1.45)
    out.clear_buffer()
    cleared = time.perf_counter()
    await asyncio.sleep(0.2)
    await out.aclose()
    assert line.clears and line.clears[0] - cleared < 0.05
    assert not [t for t, _ in line.frames if t > cleared + 0.025]
    ev = finished[0]
    assert ev.interrupted and 1.35 < ev.playback_position < 1.55
    assert ev.synchronized_transcript in ("one two three four five", "one two three four five six")
    assert markers == [{"turn": "t1"}]


def test_heard_part_keeps_whole_words_only():
    assert heard_part("alpha beta gamma delta", 0.5) == "alpha beta"
    assert heard_part("alpha beta gamma delta", 0.1) == ""
    assert heard_part(" alpha beta ", 1.0) == "alpha beta"


async def test_input_resamples_any_rate_to_the_session_rate():
    inp = CallAudioInput(sample_rate=16000)
    for _ in range(10):
        inp.push(np.zeros(960, np.int16), 48000)  # 20 ms at 48 kHz
    inp.close()
    frames = [f async for f in inp]
    assert all(f.sample_rate == 16000 for f in frames)
    assert 2800 < sum(f.samples_per_channel for f in frames) <= 3200
