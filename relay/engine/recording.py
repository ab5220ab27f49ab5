"""A call's stereo recording: the agent on the left, the caller on the right, each placed at
the moment the relay heard or played it.

:class:`StereoRecorder` is tapped at the two ends of the engine's audio path: the caller's
frames as :class:`relay.engine.audio_io.CallAudioInput` receives them, and the agent's frames
as :class:`relay.engine.audio_io.CallAudioOutput` writes them to the line (so a reply cut by
a barge-in stops where the caller stopped hearing it, and the overlap is kept). Each channel
is spooled to a raw PCM file as the call runs (a long call costs disk, not memory), with
silence written for the gaps; :func:`encode_ogg_opus` turns the two files into one OGG/Opus
file after the call, in a worker thread.

Placement: a frame is written where the call's clock says it belongs, unless that is within
:data:`JITTER_S` of where the channel's audio so far ends, in which case it follows on
directly (network jitter must not chop a word into pieces).
"""

from __future__ import annotations

import contextlib
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np
import soxr

from relay.engine.codecs import PCM

JITTER_S = 0.12
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# Below ~32 kbps libopus codes the two channels jointly and one side leaks into the other
# (measured: the caller at -26 dB in the agent's channel at 24 kbps, 8 kHz; Whisper still
# understood them there). At these rates the channels stay apart (-80 dB or better).
BITRATE = {8000: 40000, 12000: 40000, 16000: 48000}
_SAMPLE_BYTES = 2


def private_dirs(directory: Path) -> None:
    """``directory`` and the parents it needs, each made owner-only (existing ones are left)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for made in reversed(missing):
        made.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        made.chmod(PRIVATE_DIR)  # mkdir's mode is masked by the umask


class RecordingError(Exception):
    """The recording could not be written or encoded."""


class _Channel:
    """One side of the call, spooled as 16-bit mono PCM at the recording's rate."""

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path
        self.rate = rate
        self.samples = 0
        # Owner-only: a call's audio is the tenant's and the caller's, not the host's users'.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        self._file: IO[bytes] | None = open(fd, "wb", buffering=64 * 1024)
        self._resampler: Any = None
        self._resampling_from = 0
        # Where the resampler's next output belongs: it hands back the start of a run only
        # after a few frames, but that audio starts where the run's first input frame did.
        self._run_start: float | None = None

    def write(self, pcm: PCM, rate: int, start_s: float) -> None:
        if self._file is None or not len(pcm):
            return
        if rate != self.rate:
            if self._resampling_from != rate:
                self._flush_resampler()
                self._resampler = soxr.ResampleStream(
                    rate, self.rate, 1, dtype="int16", quality="HQ"
                )
                self._resampling_from = rate
            if self._run_start is None:
                self._run_start = start_s
            pcm = self._resampler.resample_chunk(pcm)
            if not len(pcm):
                return
            start_s, self._run_start = self._run_start, None
            if self.samples / self.rate > start_s:  # a run already under way: follow on
                start_s = self.samples / self.rate
        self._place(pcm, start_s)

    def _place(self, pcm: PCM, start_s: float) -> None:
        assert self._file is not None
        target = int(max(0.0, start_s) * self.rate)
        gap = target - self.samples
        if gap > JITTER_S * self.rate:
            self._file.write(bytes(gap * _SAMPLE_BYTES))
            self.samples += gap
        self._file.write(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
        self.samples += len(pcm)

    def _flush_resampler(self) -> None:
        if self._resampler is not None and self._file is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            if len(tail):
                self._place(tail, self._run_start or self.samples / self.rate)
        self._resampler, self._resampling_from, self._run_start = None, 0, None

    def close(self) -> None:
        if self._file is not None:
            self._flush_resampler()
            self._file.close()
            self._file = None


class StereoRecorder:
    """Taps for both sides of one call; ``origin`` is the call's clock zero
    (``time.perf_counter()``, the same moment transcript offsets count from)."""

    def __init__(self, directory: Path, call_id: str, *, rate: int, origin: float) -> None:
        if rate not in OPUS_RATES:
            raise ValueError(f"Opus cannot record at {rate} Hz")
        private_dirs(directory)
        self.rate = rate
        self.origin = origin
        self.output = directory / f"{call_id}.ogg"
        self.left = _Channel(directory / f"{call_id}.agent.pcm", rate)
        self.right = _Channel(directory / f"{call_id}.caller.pcm", rate)
        self.error: str | None = None

    def agent(self, pcm: PCM, rate: int, at: float | None = None) -> None:
        """A frame of agent audio that starts playing at ``at`` (now if None)."""
        start = (time.perf_counter() if at is None else at) - self.origin
        self._write(self.left, pcm, rate, start)

    def caller(self, pcm: PCM, rate: int, at: float | None = None) -> None:
        """A frame of caller audio that has just arrived (``at``, now if None): it was spoken
        over the frame's length before that."""
        end = (time.perf_counter() if at is None else at) - self.origin
        self._write(self.right, pcm, rate, end - len(pcm) / rate)

    def _write(self, channel: _Channel, pcm: PCM, rate: int, start: float) -> None:
        if self.error is not None:
            return
        try:
            channel.write(pcm, rate, start)
        except OSError as exc:  # a full disk costs the recording, never the call
            self.error = f"writing the recording failed: {exc}"
            self.close()

    def close(self) -> None:
        self.left.close()
        self.right.close()

    def discard(self) -> None:
        self.close()
        for path in (self.left.path, self.right.path, self.output):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def encode(self) -> tuple[int, int]:
        """Blocking (run it in a thread): the OGG/Opus file from the spooled channels, which
        are then deleted. Returns (duration in ms, size in bytes)."""
        self.close()
        if self.error is not None:
            raise RecordingError(self.error)
        try:
            samples = encode_ogg_opus(self.left.path, self.right.path, self.output, self.rate)
        except Exception as exc:
            with contextlib.suppress(FileNotFoundError):
                self.output.with_suffix(".ogg.part").unlink()
            raise RecordingError(f"encoding the recording failed: {exc!r}") from exc
        finally:
            for path in (self.left.path, self.right.path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return samples * 1000 // self.rate, self.output.stat().st_size


def encode_ogg_opus(left: Path, right: Path, output: Path, rate: int) -> int:
    """Interleave two raw 16-bit mono files (the shorter padded with silence) into a stereo
    OGG/Opus file; returns the length in samples per channel."""
    import av  # PyAV: imported here, it is only needed once per call, in a worker thread

    channels = [
        np.memmap(p, dtype="<i2", mode="r") if p.stat().st_size else np.zeros(0, "<i2")
        for p in (left, right)
    ]
    total = max(len(c) for c in channels)
    tmp = output.with_suffix(".ogg.part")
    with av.open(str(tmp), mode="w", format="ogg") as container:
        stream: Any = container.add_stream("libopus", rate=rate, layout="stereo")
        stream.bit_rate = BITRATE.get(rate, 64000)
        stream.time_base = Fraction(1, rate)
        frame_size = rate // 50  # 20 ms, an Opus frame
        for start in range(0, max(total, 1), frame_size):
            block = np.zeros((frame_size, 2), dtype="<i2")
            for i, channel in enumerate(channels):
                part = channel[start : start + frame_size]
                block[: len(part), i] = part
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    tmp.chmod(PRIVATE_FILE)
    tmp.replace(output)
    return total
