"""``play`` clips (relay.engine.playback): fetched from a real local server, decoded by
PyAV, cached per project; every way a clip can be wrong is a stable reason, never a crash."""

from __future__ import annotations

import asyncio
import io
import wave

import av
import numpy as np
import pytest
from aiohttp import web

from relay.config import Settings
from relay.egress import client_session
from relay.engine.playback import MAX_CLIP_BYTES, ClipError, Clips


def tone(hz: float = 1000.0, seconds: float = 0.5, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 12000).astype(np.int16)


def wav_bytes(pcm: np.ndarray, rate: int = 16000, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(pcm, channels).tobytes())
    return out.getvalue()


def flac_bytes(pcm: np.ndarray, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


class ClipServer:
    """A developer's file server: counts what it is asked for."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self.delay = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        await asyncio.sleep(self.delay)
        if name == "moved.wav":
            raise web.HTTPFound("/clips/tone.wav")
        if name == "endless.wav":  # no Content-Length: the cap is counted as it arrives
            response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
            await response.prepare(request)
            for _ in range(MAX_CLIP_BYTES // 65536 + 2):
                await response.write(b"\0" * 65536)
            await response.write_eof()
            return response
        if name not in self.files:
            raise web.HTTPNotFound()
        body, kind = self.files[name]
        return web.Response(body=body, content_type=kind)


@pytest.fixture
async def clip_server(aiohttp_server):
    server = ClipServer()
    server.files["tone.wav"] = (wav_bytes(tone()), "audio/wav")
    server.files["stereo44.wav"] = (wav_bytes(tone(rate=44100), 44100, 2), "audio/wav")
    server.files["tone.flac"] = (flac_bytes(tone()), "audio/flac")
    server.files["page.html"] = (b"<html><body>not audio</body></html>", "text/html")
    server.files["huge.wav"] = (b"\0" * (MAX_CLIP_BYTES + 1), "audio/wav")
    server.files["long.wav"] = (wav_bytes(np.zeros(8000 * 121, np.int16), 8000), "audio/wav")
    app = web.Application()
    app.router.add_get("/clips/{name}", server.handle)
    running = await aiohttp_server(app)
    server.url = lambda name: str(running.make_url(f"/clips/{name}"))  # type: ignore[attr-defined]
    return server


@pytest.fixture
async def local_http():
    """The relay's own egress client, allowed to reach this machine (the test server)."""
    session = client_session(Settings(allow_private_webhooks=True))
    yield session
    await session.close()


@pytest.mark.parametrize(
    ("name", "rate"), [("tone.wav", 8000), ("stereo44.wav", 16000), ("tone.flac", 22050)]
)
async def test_a_clip_is_decoded_to_mono_pcm_at_the_rate_asked_for(
    clip_server, local_http, name, rate
):
    pcm = await Clips().get(local_http, "proj", clip_server.url(name), rate)
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert abs(len(pcm) - rate // 2) <= rate // 50  # half a second, whatever the source rate
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * rate / len(pcm)
    assert 980 < peak_hz < 1020  # still the 1 kHz tone


async def test_a_clip_is_fetched_once_per_project_and_shared_while_it_downloads(
    clip_server, local_http
):
    clips = Clips()
    clip_server.delay = 0.2
    url = clip_server.url("tone.wav")
    first, second = await asyncio.gather(
        clips.get(local_http, "proj_a", url, 8000), clips.get(local_http, "proj_a", url, 8000)
    )
    assert first is second
    again = await clips.get(local_http, "proj_a", url, 8000)
    assert again is first
    assert clip_server.hits["tone.wav"] == 1 == clips.fetches
    await clips.get(local_http, "proj_b", url, 8000)  # another tenant's cache, not this one's
    assert clip_server.hits["tone.wav"] == 2


async def test_a_clip_past_its_time_is_fetched_again(clip_server, local_http):
    clips = Clips(ttl_s=0.0)
    url = clip_server.url("tone.wav")
    await clips.get(local_http, "proj", url, 8000)
    await clips.get(local_http, "proj", url, 8000)
    assert clip_server.hits["tone.wav"] == 2


async def test_the_cache_keeps_the_clips_used_last_within_its_size(clip_server, local_http):
    clips = Clips(cache_bytes=20_000)  # one half-second clip at 16 kHz (16,000 bytes)
    tone_url, flac_url = clip_server.url("tone.wav"), clip_server.url("tone.flac")
    await clips.get(local_http, "proj", tone_url, 16000)
    await clips.get(local_http, "proj", flac_url, 16000)  # pushes the first one out
    await clips.get(local_http, "proj", flac_url, 16000)
    await clips.get(local_http, "proj", tone_url, 16000)
    assert clip_server.hits == {"tone.wav": 2, "tone.flac": 1}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("missing.wav", "http_status"),
        ("moved.wav", "http_status"),  # a redirect is not followed
        ("page.html", "not_audio"),
        ("huge.wav", "too_large"),
        ("endless.wav", "too_large"),
        ("long.wav", "too_long"),
    ],
)
async def test_a_clip_that_cannot_be_played_fails_with_a_stable_reason(
    clip_server, local_http, name, reason
):
    with pytest.raises(ClipError) as failed:
        await Clips().get(local_http, "proj", clip_server.url(name), 8000)
    assert failed.value.reason == reason
    if name == "moved.wav":
        assert "tone.wav" not in clip_server.hits


async def test_a_clip_on_a_private_address_is_refused_by_the_relays_client(clip_server):
    """The relay's client as deployed: a tenant's clip URL cannot reach inside its network."""
    session = client_session(Settings())
    try:
        with pytest.raises(ClipError) as failed:
            await Clips().get(session, "proj", clip_server.url("tone.wav"), 8000)
    finally:
        await session.close()
    assert failed.value.reason == "connection_failed"
    assert "not a public address" in failed.value.detail
    assert clip_server.hits == {}


async def test_a_failed_download_is_not_cached(clip_server, local_http):
    clips = Clips()
    url = clip_server.url("later.wav")
    with pytest.raises(ClipError):
        await clips.get(local_http, "proj", url, 8000)
    clip_server.files["later.wav"] = (wav_bytes(tone()), "audio/wav")
    assert len(await clips.get(local_http, "proj", url, 8000)) > 0


def test_the_words_of_a_reply_leave_its_clips_out():
    from relay.engine.playback import PLAY_MARK, words_only

    assert words_only(f"Hold on.{PLAY_MARK}Thanks.") == "Hold on. Thanks."
    assert words_only(f"Hold on. {PLAY_MARK} {PLAY_MARK}Thanks.") == "Hold on. Thanks."
    assert words_only(PLAY_MARK) == ""
    assert words_only("No clip  here. ") == "No clip  here. "
