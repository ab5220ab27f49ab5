"""Audio clips a reply asks to play (a ``play`` chunk): fetched, checked, decoded, cached.

A webhook's ``{"play": "https://..."}`` puts a clip between the reply's words. The clip is
fetched with the call's HTTP client, which in the relay is :func:`relay.egress.client_session`
(public addresses only, no redirects followed), the moment its chunk arrives, so it downloads
while the words before it are spoken. The body is capped, the container must be one of a few
audio formats, and the decoded audio is capped in length: a clip is a tenant's file, read by
ffmpeg's decoders (PyAV), so nothing else is accepted.

Decoded clips are kept per project (a URL another tenant uses is not theirs to time) and per
sample rate, least recently used out first, within ``cache_bytes``; a clip is fetched again
after ``ttl_s``. Two calls asking for the same clip at once share one download.

A clip that cannot be played is skipped with a :class:`ClipError` whose ``reason`` is stable:
``connection_failed``, ``timeout``, ``http_status``, ``too_large``, ``not_audio``,
``too_long``.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import aiohttp
import av
import numpy as np
import numpy.typing as npt

from relay.egress import describe
from relay.turns import PLAY_MARK

__all__ = ["PLAY_MARK", "ClipError", "Clips", "decode", "fetch", "words_only"]

MAX_CLIP_BYTES = 10 * 1024 * 1024
MAX_CLIP_SECONDS = 120.0
FETCH_TIMEOUT_S = 10.0
FORMATS = frozenset({"wav", "mp3", "ogg", "flac"})

PCM = npt.NDArray[np.int16]


def words_only(text: str) -> str:
    """What a reply said, its clips left out: ``"Hold on.<clip>Thanks."`` is ``"Hold on.
    Thanks."``."""
    if PLAY_MARK not in text:
        return text
    return re.sub(rf"\s*{PLAY_MARK}[\s{PLAY_MARK}]*", " ", text).strip()


class ClipError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class _Entry:
    pcm: PCM
    fetched_at: float


class Clips:
    """One per engine: every call's clips, cached."""

    def __init__(self, *, cache_bytes: int = 32 * 1024 * 1024, ttl_s: float = 600.0) -> None:
        self.cache_bytes = cache_bytes
        self.ttl_s = ttl_s
        self.fetches = 0  # downloads made (a cached or shared clip is not one)
        self._cache: OrderedDict[tuple[str, str, int], _Entry] = OrderedDict()
        self._size = 0
        self._inflight: dict[tuple[str, str, int], asyncio.Task[PCM]] = {}

    def get(
        self, http: aiohttp.ClientSession, scope: str, url: str, sample_rate: int
    ) -> asyncio.Future[PCM]:
        """The clip as mono 16-bit PCM at ``sample_rate``: at once from the cache, or a
        download that has started (shared with whoever else is waiting for it)."""
        key = (scope, url, sample_rate)
        entry = self._cache.get(key)
        if entry is not None and time.monotonic() - entry.fetched_at < self.ttl_s:
            self._cache.move_to_end(key)
            done: asyncio.Future[PCM] = asyncio.get_running_loop().create_future()
            done.set_result(entry.pcm)
            return done
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(http, key))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        # A caller that stops waiting (the reply was cut) must not cancel the shared download.
        return asyncio.shield(task)

    def _settled(self, key: tuple[str, str, int], task: asyncio.Task[PCM]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # each waiter reads it; nobody waiting must not log it as lost

    async def _load(self, http: aiohttp.ClientSession, key: tuple[str, str, int]) -> PCM:
        _, url, sample_rate = key
        self.fetches += 1
        body = await fetch(http, url)
        pcm = await asyncio.to_thread(decode, body, sample_rate)
        self._keep(key, pcm)
        return pcm

    def _keep(self, key: tuple[str, str, int], pcm: PCM) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._size -= old.pcm.nbytes
        if pcm.nbytes > self.cache_bytes:
            return
        self._cache[key] = _Entry(pcm, time.monotonic())
        self._size += pcm.nbytes
        while self._size > self.cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._size -= dropped.pcm.nbytes


async def fetch(http: aiohttp.ClientSession, url: str) -> bytes:
    """The clip's bytes, at most :data:`MAX_CLIP_BYTES`, or :class:`ClipError`."""
    try:
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            async with http.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise ClipError("http_status", f"HTTP {response.status}")
                if (response.content_length or 0) > MAX_CLIP_BYTES:
                    raise ClipError("too_large", f"more than {MAX_CLIP_BYTES} bytes")
                body = bytearray()
                async for piece in response.content.iter_chunked(64 * 1024):
                    body += piece
                    if len(body) > MAX_CLIP_BYTES:
                        raise ClipError("too_large", f"more than {MAX_CLIP_BYTES} bytes")
                return bytes(body)
    except ClipError:
        raise
    except TimeoutError:
        raise ClipError("timeout", f"no whole answer within {FETCH_TIMEOUT_S:.0f} s") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise ClipError("connection_failed", describe(exc)) from None


def decode(body: bytes, sample_rate: int) -> PCM:
    """``body`` (WAV, MP3, Ogg or FLAC) as mono 16-bit PCM at ``sample_rate``."""
    try:
        container = av.open(io.BytesIO(body), mode="r")
    except av.error.FFmpegError as exc:
        raise ClipError("not_audio", f"not a file of audio ({exc.strerror or exc})") from None
    with container:
        names = set(container.format.name.split(","))
        if not names & FORMATS or not container.streams.audio:
            raise ClipError("not_audio", f"not one of {', '.join(sorted(FORMATS))}")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        limit = int(MAX_CLIP_SECONDS * sample_rate)
        parts: list[PCM] = []
        total = 0
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    part = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                    parts.append(part)
                    total += part.size
                    if total > limit:
                        raise ClipError("too_long", f"longer than {MAX_CLIP_SECONDS:.0f} s")
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))
        except av.error.FFmpegError as exc:
            raise ClipError("not_audio", f"the audio does not decode ({exc})") from None
    if not parts:
        raise ClipError("not_audio", "no audio in the file")
    return np.concatenate(parts)
