"""espeak-ng TTS (``espeak``): the Debian package's binary, run once per sentence.

The fast fallback synthesizer: its first audio comes almost at once. Each sentence is a
subprocess of its own, so nothing is loaded into the relay's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil

import numpy as np

from relay.engine.codecs import PCM, resample
from relay.engine.speech.local import LocalTTS


class EspeakTTS(LocalTTS):
    name = "espeak-ng"

    def __init__(self, *, sample_rate: int, voice: str = "en-us", words_per_minute: int = 165):
        super().__init__(sample_rate=sample_rate)
        self.voice = voice
        self.words_per_minute = words_per_minute

    @property
    def voice_key(self) -> str:
        return f"{self.name}:{self.voice}:{self.words_per_minute}"

    @staticmethod
    def warm() -> None:
        espeak_binary()

    async def render(self, text: str, *, deadline: float | None = None) -> PCM:
        proc = await asyncio.create_subprocess_exec(
            espeak_binary(),
            "--stdout",
            "-v",
            self.voice,
            "-s",
            str(self.words_per_minute),
            "--",
            text,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            wav, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        pcm, rate = espeak_wav_to_pcm(wav)
        return resample(pcm, rate, self.sample_rate)


def espeak_binary() -> str:
    path = shutil.which("espeak-ng") or shutil.which("espeak")
    if path is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    return path


def espeak_wav_to_pcm(wav: bytes) -> tuple[PCM, int]:
    """espeak-ng --stdout writes a WAV whose size fields are unset; find 'data' ourselves."""
    rate = int.from_bytes(wav[24:28], "little")
    pos = wav.find(b"data", 12)
    if pos < 0:
        raise RuntimeError("espeak-ng produced no audio")
    pcm = np.frombuffer(wav[pos + 8 :][: (len(wav) - pos - 8) // 2 * 2], dtype=np.int16)
    return pcm.copy(), rate
