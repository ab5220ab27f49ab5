"""Recorded calls with real speech: the sim handset calls an agent with ``recordingEnabled``,
then the recording is downloaded through its signed URL, decoded, split into its channels and
each channel is run through Whisper. The agent's words must be on the left, the caller's on
the right, each where the transcript says it was spoken; a barge-in must show both voices at
once and the agent cut off shortly after.

Slow (Piper, Whisper, the VAD; real-time audio) and SQLite only, like
``tests/carriers/test_sim_calls.py``: the store side runs on both databases in
``test_recordings.py``."""

from __future__ import annotations

import asyncio
import io
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np
import pytest
from aiohttp import web

from relay.engine.codecs import resample
from relay.events import attach
from relay.handset import SimHandset, transcribe
from relay.store.db import Database
from tests.carriers.test_sim_calls import GREETING, Hook, base_url
from tests.transports.support import agent_with_number, phone_settings

pytestmark = pytest.mark.slow

LOUD = 0.03  # of full scale, RMS over 10 ms: speech, not the codec's noise floor


@pytest.fixture
async def database(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    attach(db)
    yield db
    await db.close()


@pytest.fixture
async def recorded_relay(app_client, aiohttp_server, raw_key, tmp_path):
    async def make(replies: dict[str, str]):
        hook = Hook(replies)
        app = web.Application()
        app.router.add_post("/hook", hook.handle)
        server = await aiohttp_server(app)
        client = await app_client(phone_settings(data_dir=tmp_path / "data"))
        key = await raw_key("proj-a")
        auth = {"Authorization": f"Bearer {key}"}
        agent, number = await agent_with_number(
            client,
            auth,
            webhookUrl=str(server.make_url("/hook")),
            greeting=GREETING,
            recordingEnabled=True,
        )
        hook.secret = agent["webhookSecret"]
        return client, hook, key, auth, number

    return make


async def ready_recording(client, auth, call_id: str, within: float = 90.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        resp = await client.get(f"/v1/calls/{call_id}/recording", headers=auth)
        body = await resp.json()
        if body["status"] != "pending" or loop.time() > deadline:
            assert body["status"] == "ready", body
            return body
        await asyncio.sleep(0.1)


async def channels(client, recording: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Download through the signed URL and decode: (left, right) as 16 kHz int16."""
    url = urlsplit(recording["url"])
    resp = await client.get(f"{url.path}?{url.query}")
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/ogg"
    data = await resp.read()
    assert len(data) == recording["sizeBytes"]
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.channels == 2
        rate = stream.codec_context.sample_rate
        parts = []
        for frame in container.decode(stream):
            arr = frame.to_ndarray()
            parts.append(arr.reshape(2, -1).T if frame.format.is_planar else arr.reshape(-1, 2))
    audio = np.concatenate(parts).astype(np.float64)
    if not np.issubdtype(parts[0].dtype, np.floating):
        audio /= 32768.0
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    return resample(pcm[:, 0].copy(), rate, 16000), resample(pcm[:, 1].copy(), rate, 16000)


def loud_spans(pcm: np.ndarray, rate: int = 16000) -> list[tuple[int, int]]:
    """(start, end) milliseconds of loud stretches (gaps under 300 ms are bridged)."""
    win = rate // 100
    n = len(pcm) // win
    rms = np.sqrt((pcm[: n * win].astype(np.float64).reshape(n, win) ** 2).mean(axis=1))
    loud = rms > LOUD * 32768
    spans: list[list[int]] = []
    for i, on in enumerate(loud):
        if not on:
            continue
        if spans and i * 10 - spans[-1][1] <= 300:
            spans[-1][1] = i * 10 + 10
        else:
            spans.append([i * 10, i * 10 + 10])
    return [(a, b) for a, b in spans]


def within(span: tuple[int, int], segment: dict[str, Any]) -> bool:
    """A loud stretch of the recording starts and ends within a transcript segment (with
    150 ms either side for the VAD's and the codec's edges)."""
    return segment["startMs"] - 150 <= span[0] and span[1] <= segment["endMs"] + 150


def heard(pcm: np.ndarray, span: tuple[int, int]) -> str:
    """What Whisper hears in one loud stretch (with some silence around it)."""
    return transcribe(between(pcm, max(0, span[0] - 300), span[1] + 300), 16000).lower()


def between(pcm: np.ndarray, start_ms: int, end_ms: int) -> np.ndarray:
    return pcm[start_ms * 16 : end_ms * 16]


async def segments_of(client, auth, call_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/calls/{call_id}/transcript", headers=auth)
    return (await resp.json())["segments"]


async def test_the_agent_is_on_the_left_and_the_caller_on_the_right(recorded_relay):
    client, hook, key, auth, number = await recorded_relay({"close": "We shut at midnight."})
    report = await SimHandset(base_url(client), key).call(
        number, ["What time do you close on Sundays?"]
    )
    assert "midnight" in report.turns[0].heard.lower()
    recording = await ready_recording(client, auth, report.call_id)
    left, right = await channels(client, recording)
    heard_left = transcribe(left, 16000).lower()
    heard_right = transcribe(right, 16000).lower()
    assert "line" in heard_left and "midnight" in heard_left, heard_left
    assert "sunday" not in heard_left, heard_left
    assert "close" in heard_right and "sunday" in heard_right, heard_right
    assert "line" not in heard_right and "midnight" not in heard_right, heard_right

    segments = await segments_of(client, auth, report.call_id)
    greeting, user, answer = (
        next(s for s in segments if s["speaker"] == "agent"),
        next(s for s in segments if s["speaker"] == "user"),
        [s for s in segments if s["speaker"] == "agent"][-1],
    )
    agent_spans, caller_spans = loud_spans(left), loud_spans(right)
    assert len(caller_spans) == 1, caller_spans
    # Each voice is heard inside the stretch the transcript gives it: from the first frame
    # played (agent) or the VAD's onset (caller) to its end. Not to the millisecond: a
    # reply's first frames can be quiet, or TTS can lag behind on a busy machine.
    assert within(agent_spans[0], greeting), (agent_spans, greeting)
    assert within(caller_spans[0], user), (caller_spans, user)
    later = [s for s in agent_spans if s[0] > caller_spans[0][1]]
    assert later, (agent_spans, caller_spans)
    reply = later[0]
    assert within(reply, answer), (agent_spans, answer)
    assert greeting["endMs"] < caller_spans[0][0] and caller_spans[0][1] < reply[0]
    # and what is heard there is what the transcript says
    assert "midnight" in transcribe(between(left, reply[0], reply[1] + 200), 16000).lower()
    assert recording["durationSeconds"] * 1000 >= reply[1]


async def test_a_barge_in_is_recorded_as_it_happened(recorded_relay):
    long_answer = (
        "We are open from nine in the morning until ten at night on weekdays, from ten "
        "until eleven on Saturdays, from ten until eight on Sundays, and on public holidays "
        "we follow the Sunday hours, with the kitchen closing an hour before we do, except "
        "for Christmas Day."
    )
    client, hook, key, auth, number = await recorded_relay(
        {"hours": long_answer, "tuesday": "Done, you are booked in for Tuesday evening."}
    )
    report = await SimHandset(base_url(client), key).call(
        number,
        ["What are your opening hours?", "Actually, just book me in for Tuesday."],
        barge_in_after_ms=1500,
    )
    assert report.turns[0].barged_in, report.as_dict()
    recording = await ready_recording(client, auth, report.call_id)
    left, right = await channels(client, recording)
    agent_spans, caller_spans = loud_spans(left), loud_spans(right)
    assert len(caller_spans) >= 2, caller_spans  # the second line may pause at its comma
    barge = caller_spans[1][0]
    # the agent was talking when the caller barged in: both voices at once ...
    during = [s for s in agent_spans if s[0] < barge < s[1]]
    assert during, (agent_spans, caller_spans)
    cut = during[0]
    # ... and stopped within the barge-in time (300 ms of speech) plus the VAD's reaction
    assert barge < cut[1] <= barge + 1500, (agent_spans, caller_spans)
    assert cut[1] - cut[0] < 8000  # nowhere near the 15 s the whole answer takes
    heard_cut = heard(left, cut)
    assert "open" in heard_cut and "morning" in heard_cut, heard_cut
    after = " ".join(heard(left, s) for s in agent_spans if s[0] > cut[1])
    assert "tuesday" in after and "christmas" not in after + heard_cut, (after, heard_cut)
    segments = await segments_of(client, auth, report.call_id)
    [interrupted] = [s for s in segments if s["speaker"] == "agent" and s["interrupted"]]
    assert abs(interrupted["endMs"] - cut[1]) <= 300, (interrupted, cut)  # the same moment
