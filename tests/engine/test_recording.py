"""The stereo recorder: each side lands on its channel at the time it was tapped, jitter is
absorbed, gaps are silence, and the file is real OGG/Opus that decodes back."""

from __future__ import annotations

import stat
from pathlib import Path

import av
import numpy as np
import pytest

from relay.engine.recording import JITTER_S, RecordingError, StereoRecorder

RATE = 8000
FRAME = RATE // 50


def tone(seconds: float, hz: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


def frames(pcm: np.ndarray, size: int = FRAME):
    for i in range(0, len(pcm), size):
        yield i, pcm[i : i + size]


def decode(path: Path) -> tuple[np.ndarray, int]:
    """(samples x 2 float array, rate) as any player would decode the file."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name in ("opus", "libopus")
        assert stream.codec_context.channels == 2
        chunks = [
            f.to_ndarray().reshape(2, -1).T if f.format.is_planar else f.to_ndarray().reshape(-1, 2)
            for f in container.decode(stream)
        ]
        return np.concatenate(chunks).astype(np.float64), stream.codec_context.sample_rate


def loud_spans(channel: np.ndarray, rate: int, threshold: float) -> list[tuple[float, float]]:
    """(start, end) seconds of runs of 10 ms windows louder than ``threshold``."""
    win = rate // 100
    n = len(channel) // win
    rms = np.sqrt((channel[: n * win].reshape(n, win) ** 2).mean(axis=1))
    loud = rms > threshold
    spans, start = [], None
    for i, on in enumerate(loud):
        if on and start is None:
            start = i
        elif not on and start is not None:
            spans.append((start / 100, i / 100))
            start = None
    if start is not None:
        spans.append((start / 100, n / 100))
    return spans


def test_each_side_is_placed_on_its_channel_at_the_time_it_was_tapped(tmp_path):
    rec = StereoRecorder(tmp_path, "call_x", rate=RATE, origin=100.0)
    agent = tone(0.6, 440)
    for i, frame in frames(agent):  # played from 0.3 s, one frame per 20 ms
        rec.agent(frame, RATE, at=100.3 + i / RATE)
    caller = tone(0.8, 700, rate=16000)  # the caller at another rate: resampled
    for i, frame in frames(caller, 320):  # a frame arrives once it has been spoken
        rec.caller(frame, 16000, at=101.5 + (i + len(frame)) / 16000)
    for i, frame in frames(tone(0.4, 440)):  # the agent again, after a long silence
        rec.agent(frame, RATE, at=103.0 + i / RATE)
    duration_ms, size = rec.encode()

    assert size == (tmp_path / "call_x.ogg").stat().st_size > 0
    assert not (tmp_path / "call_x.agent.pcm").exists()  # the spool files are gone
    assert 3350 <= duration_ms <= 3450
    audio, rate = decode(tmp_path / "call_x.ogg")
    left = loud_spans(audio[:, 0], rate, 0.05 * 32768 if audio.max() > 2 else 0.05)
    right = loud_spans(audio[:, 1], rate, 0.05 * 32768 if audio.max() > 2 else 0.05)
    assert len(left) == 2 and len(right) == 1, (left, right)
    assert left[0][0] == pytest.approx(0.3, abs=0.03)
    assert left[0][1] == pytest.approx(0.9, abs=0.03)
    assert left[1][0] == pytest.approx(3.0, abs=0.03)
    assert right[0][0] == pytest.approx(1.5, abs=0.03)
    assert right[0][1] == pytest.approx(2.3, abs=0.03)


def test_late_frames_follow_on_and_a_real_gap_is_kept(tmp_path):
    rec = StereoRecorder(tmp_path, "call_j", rate=RATE, origin=0.0)
    pcm = tone(1.0, 500)
    late = JITTER_S / 2
    for n, (i, frame) in enumerate(frames(pcm)):
        # every 10th frame arrives late, by less than the jitter allowance
        rec.caller(frame, RATE, at=1.0 + (i + len(frame)) / RATE + (late if n % 10 == 5 else 0))
    rec.caller(tone(0.2, 500), RATE, at=3.2)  # after a pause: placed where it belongs
    rec.encode()
    audio, rate = decode(tmp_path / "call_j.ogg")
    threshold = 0.05 * (32768 if audio.max() > 2 else 1)
    spans = loud_spans(audio[:, 1], rate, threshold)
    assert len(spans) == 2, spans  # no hole punched by the late frames
    assert spans[0][0] == pytest.approx(1.0, abs=0.03)
    assert spans[0][1] == pytest.approx(2.0, abs=0.03)
    assert spans[1][0] == pytest.approx(3.0, abs=0.03)
    assert loud_spans(audio[:, 0], rate, threshold) == []


def test_a_rate_opus_cannot_record_is_refused(tmp_path):
    with pytest.raises(ValueError, match="44100"):
        StereoRecorder(tmp_path, "call_r", rate=44100, origin=0.0)


def test_a_spool_that_cannot_be_written_fails_the_recording_not_the_call(tmp_path):
    rec = StereoRecorder(tmp_path, "call_f", rate=RATE, origin=0.0)
    rec.left._file.close()  # as if the disk had gone away under it
    rec.left._file = open(tmp_path / "call_f.agent.pcm", "rb")  # noqa: SIM115
    rec.agent(tone(0.1, 440), RATE, at=0.0)  # must not raise
    assert rec.error is not None and "writing the recording failed" in rec.error
    with pytest.raises(RecordingError, match="writing the recording failed"):
        rec.encode()


@pytest.mark.parametrize("rate", [8000, 16000])
def test_one_side_does_not_leak_into_the_other(tmp_path, rate):
    rec = StereoRecorder(tmp_path, "call_l", rate=rate, origin=0.0)
    t = np.arange(2 * rate) / rate
    # a voice-like signal: a gliding tone, amplitude-modulated at a syllable rate
    voice = np.sin(2 * np.pi * (200 + 300 * t) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    rec.caller((voice * 12000).astype(np.int16), rate, at=2.5)
    rec.encode()
    audio, _ = decode(tmp_path / "call_l.ogg")
    left, right = audio[:, 0], audio[:, 1]
    leak_db = 20 * np.log10(np.sqrt((left**2).mean()) / np.sqrt((right**2).mean()) + 1e-12)
    assert leak_db < -60, leak_db


def test_recordings_and_their_folders_are_readable_by_the_owner_only(tmp_path):
    folder = tmp_path / "recordings" / "proj"
    rec = StereoRecorder(folder, "call_p", rate=RATE, origin=0.0)
    spools = [folder / "call_p.agent.pcm", folder / "call_p.caller.pcm"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in spools] == [0o600, 0o600]
    rec.agent(tone(0.2, 440), RATE, at=0.1)
    rec.encode()
    assert stat.S_IMODE((folder / "call_p.ogg").stat().st_mode) == 0o600
    assert [stat.S_IMODE(d.stat().st_mode) for d in (folder, folder.parent)] == [0o700, 0o700]
