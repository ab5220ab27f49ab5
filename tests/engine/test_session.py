"""The voice engine end to end: real speech in, a real webhook, real speech out."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web
from sqlalchemy import select

from relay.metrics import REGISTRY
from relay.store.models import TranscriptSegment, TurnMetrics
from tests.engine.harness import (
    Caller,
    Hook,
    RecordingLine,
    call_setup,
    make_call,
    ndjson_line,
    ndjson_start,
    start_hook,
    transcribe,
)

pytestmark = pytest.mark.slow


async def test_ndjson_reply_is_spoken_while_the_stream_is_open(
    aiohttp_server, engine, sqlite_db, http, voice
):
    e2e_before = REGISTRY.get_sample_value("relay_turn_e2e_seconds_count") or 0
    line = RecordingLine()
    stream_closed_at: list[float] = []
    question = voice("I would like to book a table for Tuesday.")

    async def reply(request, payload):
        resp = await ndjson_start(request)
        sent = time.perf_counter()
        await ndjson_line(resp, {"text": "Sure, Tuesday works.", "interim": True})
        await line.wait_audio(sent)  # hold the stream open until the caller hears chunk one
        await ndjson_line(resp, {"text": "How many people are coming?"})
        await resp.write_eof()
        stream_closed_at.append(time.perf_counter())
        return resp

    hook = Hook(reply)
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    handle = await engine.start_call(call_setup(call_id, url, tts="piper"), line, sqlite_db, http)
    caller = Caller(handle)
    await asyncio.sleep(0.3)
    spoke_until = await caller.say(question)
    payload = await hook.wait_request(1)
    first_audio = await line.wait_audio(spoke_until)
    await line.wait_quiet()
    await caller.stop()
    await handle.end()

    assert hook.verified == [True]
    assert payload["event"] == "agent.message"
    assert payload["channel"] == "voice"
    data = payload["data"]
    assert data["callId"] == call_id and data["turnId"].startswith("turn_")
    assert "table" in data["transcript"].lower() and "tuesday" in data["transcript"].lower()
    assert 0 < data["confidence"] <= 1
    assert payload["recentHistory"] == []
    assert first_audio < stream_closed_at[0]
    heard = transcribe(line.audio(spoke_until)).lower()
    assert "tuesday" in heard and "how many people" in heard

    async with sqlite_db.session() as s:
        metrics = (await s.scalars(select(TurnMetrics))).all()
        segments = (
            await s.scalars(select(TranscriptSegment).order_by(TranscriptSegment.seq))
        ).all()
    assert [seg.speaker for seg in segments] == ["user", "agent"]
    assert segments[1].text == "Sure, Tuesday works. How many people are coming?"
    values = metrics[0].values
    print(
        "turn metrics (piper+whisper):",
        values,
        "measured e2e from last loud frame:",
        round((first_audio - spoke_until) * 1000),
    )
    assert REGISTRY.get_sample_value("relay_turn_e2e_seconds_count") == e2e_before + 1
    for key in (
        "endpointing_ms",
        "stt_ms",
        "webhook_first_chunk_ms",
        "tts_first_audio_ms",
        "relay_overhead_ms",
        "e2e_ms",
    ):
        assert values[key] is not None and values[key] >= 0, key


async def _events(db, call_id):
    from relay.store.models import CallEvent

    async with db.session() as s:
        rows = (
            await s.scalars(
                select(CallEvent).where(CallEvent.call_id == call_id).order_by(CallEvent.id)
            )
        ).all()
    return [(e.source, e.level, e.message, e.data) for e in rows]


async def _call(db, call_id):
    from relay.store.models import Call

    async with db.session() as s:
        return await s.get(Call, call_id)


async def test_barge_in_cuts_the_agent_and_history_keeps_what_was_heard(
    aiohttp_server, engine, sqlite_db, http, voice
):
    line = RecordingLine()
    long_text = (
        "Our restaurant is open every day from eleven in the morning until ten at night, "
        "and on weekends we also serve breakfast from eight, with live music on Fridays."
    )

    async def reply(request, payload):
        resp = await ndjson_start(request)
        if len(hook.requests) == 1:
            await ndjson_line(resp, {"text": long_text, "interim": True})
            await asyncio.sleep(30)  # still "thinking" when the caller barges in
            await ndjson_line(resp, {"text": "Anything else?"})
        else:
            await ndjson_line(resp, {"text": "Sure."})
        await resp.write_eof()
        return resp

    question = voice("What are your opening hours?")
    interruption = voice("Wait, I need a table for four people.")
    hook = Hook(reply)
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    handle = await engine.start_call(call_setup(call_id, url), line, sqlite_db, http)
    caller = Caller(handle)
    await asyncio.sleep(0.3)
    spoke_until = await caller.say(question)
    started = await line.wait_audio(spoke_until)
    await asyncio.sleep(1.5)
    barge = caller.start_saying(interruption)
    second = await hook.wait_request(2, within=30)
    await barge
    await line.wait_quiet()
    await caller.stop()
    await handle.end()

    assert line.clears, "the line was not cleared"
    interrupt_at = line.clears[0]
    # The agent pauses at once while the speech might be a backchannel (test_backchannel.py),
    # and the line is cleared once it is known to be an interruption.
    paused_at = max(t for t, _ in line.frames if t < interrupt_at)
    assert paused_at - caller.first_loud_at < 0.4
    assert interrupt_at - caller.first_loud_at < 1.6
    after = [t for t, f in line.frames if interrupt_at + 0.05 < t < interrupt_at + 0.5]
    assert not after, "agent audio kept flowing after the clear"
    played = interrupt_at - started
    assert 1.0 < played < 3.5
    assert hook.aborted == [0], "the first webhook request was not aborted"
    history = second["recentHistory"]
    assert [h["role"] for h in history] == ["user", "agent"]
    cut = history[1]
    assert cut["interrupted"] is True and cut["channel"] == "voice"
    heard_words = cut["content"].split()
    assert 2 <= len(heard_words) < len(long_text.split())
    assert long_text.startswith(cut["content"].rstrip(".,"))
    assert "table" in second["data"]["transcript"].lower()
    async with sqlite_db.session() as s:
        segs = (await s.scalars(select(TranscriptSegment).order_by(TranscriptSegment.seq))).all()
    assert [(g.speaker, g.interrupted) for g in segs][:3] == [
        ("user", False),
        ("agent", True),
        ("user", False),
    ]
    print(
        "barge-in: caller first loud -> agent quiet",
        round((paused_at - caller.first_loud_at) * 1000),
        "ms, -> line.clear",
        round((interrupt_at - caller.first_loud_at) * 1000),
        "ms;",
        "agent audio played",
        round(played, 2),
        "s; heard:",
        cut["content"],
    )


async def _dtmf(handle, digits):
    for d in digits:
        handle.push_dtmf(d)
        await asyncio.sleep(0.05)


async def test_dtmf_reaches_the_webhook_as_data_dtmf(aiohttp_server, engine, sqlite_db, http):
    line = RecordingLine()
    hook = Hook()
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    handle = await engine.start_call(call_setup(call_id, url), line, sqlite_db, http)
    await _dtmf(handle, "42")  # then the gather timeout ends the digits
    payload = await hook.wait_request(1)
    await _dtmf(handle, "7#")  # '#' ends them at once
    second = await hook.wait_request(2)
    await line.wait_audio(0.0)
    await line.wait_quiet()
    await handle.end()
    assert payload["data"]["dtmf"] == "42" and "transcript" not in payload["data"]
    assert second["data"]["dtmf"] == "7#"
    assert second["recentHistory"][0] == {
        "role": "user",
        "content": "42",
        "channel": "voice",
        "dtmf": True,
        "at": second["recentHistory"][0]["at"],
    }
    async with sqlite_db.session() as s:
        segs = (await s.scalars(select(TranscriptSegment).order_by(TranscriptSegment.seq))).all()
    assert [(g.speaker, g.text) for g in segs if g.speaker == "dtmf"] == [
        ("dtmf", "42"),
        ("dtmf", "7#"),
    ]


async def test_reply_actions_state_dtmf_transfer(aiohttp_server, engine, sqlite_db, http):
    line = RecordingLine()

    async def reply(request, payload):
        resp = await ndjson_start(request)
        if len(hook.requests) == 1:
            await ndjson_line(
                resp, {"text": "Dialling extension.", "dtmf": "123", "state": {"step": 1}}
            )
        else:
            await ndjson_line(resp, {"text": "Transferring you now.", "interim": True})
            await ndjson_line(resp, {"transfer": "+61255509999"})
        await resp.write_eof()
        return resp

    hook = Hook(reply)
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    setup = call_setup(call_id, url, transfer_destinations=["+61255509999"])
    handle = await engine.start_call(setup, line, sqlite_db, http)
    await _dtmf(handle, "1#")
    await hook.wait_request(1)
    await line.wait_audio(0.0)
    await line.wait_quiet(0.5)
    assert line.dtmf == ["123"]
    await _dtmf(handle, "2#")
    second = await hook.wait_request(2)
    status = await asyncio.wait_for(handle.wait(), 15)
    assert second["conversationState"] == {"step": 1}
    assert line.transfers == ["+61255509999"]
    assert status == ("completed", None)
    assert not line.hangups  # a transfer hands the call on, it does not hang up
    call = await _call(sqlite_db, call_id)
    assert call.status == "completed" and call.conversation_state == {"step": 1}
    messages = [m for _, _, m, _ in await _events(sqlite_db, call_id)]
    assert "transfer to +61255509999" in messages and "sent DTMF 123" in messages


async def test_a_transfer_the_agent_does_not_allow_is_refused_and_the_call_goes_on(
    aiohttp_server, engine, sqlite_db, http
):
    line = RecordingLine()
    asked = ["+61255501234", "+61255509999"]  # the first is not the agent's to dial

    async def reply(request, payload):
        return web_json({"text": "Putting you through.", "transfer": asked[len(hook.requests) - 1]})

    hook = Hook(reply)
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    setup = call_setup(call_id, url, transfer_destinations=["+61255509999"])
    handle = await engine.start_call(setup, line, sqlite_db, http)
    await _dtmf(handle, "0#")
    await hook.wait_request(1)
    await line.wait_audio(0.0)
    await line.wait_quiet()
    assert not line.transfers and not line.hangups  # still with the agent
    await _dtmf(handle, "0#")
    status = await asyncio.wait_for(handle.wait(), 15)
    assert line.transfers == ["+61255509999"]
    assert status == ("completed", None)
    telephony = [
        (lvl, m, d) for src, lvl, m, d in await _events(sqlite_db, call_id) if src == "telephony"
    ]
    assert telephony[0] == (
        "warning",
        "transfer to +61255501234 refused: Not one of the agent's transfer destinations.",
        {
            "to": "+61255501234",
            "reason": "destination_not_allowed",
            "turnId": telephony[0][2]["turnId"],
        },
    )
    assert telephony[1][1] == "transfer to +61255509999"


async def test_hangup_chunk_ends_the_call_after_speaking(aiohttp_server, engine, sqlite_db, http):
    line = RecordingLine()

    async def reply(request, payload):
        return web_json({"text": "Goodbye, thanks for calling.", "hangup": True})

    hook = Hook(reply)
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    handle = await engine.start_call(call_setup(call_id, url), line, sqlite_db, http)
    await _dtmf(handle, "9#")
    status = await asyncio.wait_for(handle.wait(), 15)
    assert status == ("completed", None)
    assert line.hangups and line.frames
    last_audio = line.loud_frames()[-1][0]
    assert line.hangups[0] >= last_audio  # spoke first, then hung up
    spoken = line.loud_frames()[-1][0] - line.loud_frames()[0][0]
    assert spoken > 1.0
    call = await _call(sqlite_db, call_id)
    assert call.status == "completed"
    assert ("engine", "info", "the agent hung up", None) in await _events(sqlite_db, call_id)
    assert call_id not in engine.active


def web_json(obj):
    return web.json_response(obj)


async def test_uninterruptible_chunk_is_not_cut_by_caller_speech(
    aiohttp_server, engine, sqlite_db, http, voice
):
    notice = "Please listen carefully, this call may be recorded for quality and training purposes."
    line = RecordingLine()
    interruption = voice("Wait, I need a table for four people.")

    async def reply(request, payload):
        return web_json({"text": notice, "interruptible": False})

    hook = Hook(reply)
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    handle = await engine.start_call(call_setup(call_id, url), line, sqlite_db, http)
    caller = Caller(handle)
    pressed = time.perf_counter()
    handle.push_dtmf("#")
    await line.wait_audio(pressed)
    await asyncio.sleep(0.8)
    await caller.say(interruption)
    await line.wait_quiet(0.6)
    await caller.stop()
    await handle.end()
    assert not line.clears
    async with sqlite_db.session() as s:
        segs = (await s.scalars(select(TranscriptSegment).order_by(TranscriptSegment.seq))).all()
    agent = [g for g in segs if g.speaker == "agent"]
    assert [(g.text, g.interrupted) for g in agent] == [(notice, False)]


async def test_a_segment_with_nothing_to_say_is_skipped_without_a_pause(
    aiohttp_server, engine, sqlite_db, http
):
    line = RecordingLine()

    async def reply(request, payload):
        resp = await ndjson_start(request)
        await ndjson_line(resp, {"text": "Okay", "interim": True})
        await asyncio.sleep(0.4)  # longer than the text pause: "Okay" goes out on its own
        await ndjson_line(resp, {"text": ".", "interim": True})  # a segment with no words
        await asyncio.sleep(0.4)
        await ndjson_line(resp, {"text": " Your table is booked for Friday."})
        await resp.write_eof()
        return resp

    hook = Hook(reply)
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    handle = await engine.start_call(call_setup(call_id, url, tts="piper"), line, sqlite_db, http)
    pressed = time.perf_counter()
    await _dtmf(handle, "#")
    await line.wait_audio(pressed)
    await line.wait_quiet(1.5)
    await handle.end()

    times = [t for t, _ in line.frames]
    longest_gap = max(b - a for a, b in zip(times, times[1:], strict=False))
    assert longest_gap < 1.0  # no 2 s of retries of a synthesis of "."
    heard = transcribe(line.audio(pressed)).lower()
    assert "okay" in heard and "table" in heard and "friday" in heard
    problems = [e for e in await _events(sqlite_db, call_id) if e[1] in ("warning", "error")]
    assert problems == []


async def test_a_play_chunk_plays_its_clip_between_the_words_around_it(
    aiohttp_server, engine, sqlite_db, http
):
    """The clip comes from the developer's server (fetched once, then cached), is played
    where its chunk was, and the words after it follow; the transcript keeps the words only;
    a clip that cannot be played is skipped with one warning and the reply goes on."""
    from tests.engine.test_playback import tone, wav_bytes

    line = RecordingLine()
    hits: list[str] = []

    async def clip(request):
        hits.append(request.match_info["name"])
        if request.match_info["name"] != "chime.wav":
            raise web.HTTPNotFound()
        return web.Response(body=wav_bytes(tone(1000.0, 1.0)), content_type="audio/wav")

    files = web.Application()
    files.router.add_get("/{name}", clip)
    server = await aiohttp_server(files)

    async def reply(request, payload):
        resp = await ndjson_start(request)
        await ndjson_line(resp, {"text": "Please hold for the music.", "interim": True})
        await ndjson_line(resp, {"play": str(server.make_url("/chime.wav")), "interim": True})
        await ndjson_line(resp, {"play": str(server.make_url("/gone.wav")), "interim": True})
        await ndjson_line(resp, {"text": "Thank you for holding."})
        await resp.write_eof()
        return resp

    hook = Hook(reply)
    url = await start_hook(aiohttp_server, hook)
    call_id = await make_call(sqlite_db)
    handle = await engine.start_call(call_setup(call_id, url, tts="piper"), line, sqlite_db, http)
    for _ in range(2):  # the second reply's clip comes from the cache
        pressed = time.perf_counter()
        await _dtmf(handle, "#")
        await line.wait_audio(pressed)
        await line.wait_quiet(1.5)
    await handle.end()

    assert sorted(hits) == ["chime.wav", "gone.wav", "gone.wav"]  # the chime was fetched once
    # Where the line carried the 1 kHz tone, and where it carried speech.
    frames = line.loud_frames()
    toned = [t for t, f in frames if _tone_share(f, 1000.0) > 0.8]
    spoken = [t for t, f in frames if _tone_share(f, 1000.0) < 0.3]
    assert 0.8 * 2 < len(toned) * 0.02 < 1.2 * 2  # two one-second chimes
    first_chime = [t for t in toned if t < toned[0] + 1.5]
    before = [t for t in spoken if t < first_chime[0]]
    after = [t for t in spoken if first_chime[-1] < t < first_chime[-1] + 5.0]
    assert before and after  # words, then the chime, then words
    heard_before = transcribe(line.audio(0.0, first_chime[0])).lower()
    heard_after = transcribe(line.audio(first_chime[-1] + 0.05, first_chime[-1] + 4.0)).lower()
    assert "hold" in heard_before and "thank" in heard_after
    async with sqlite_db.session() as s:
        segs = (await s.scalars(select(TranscriptSegment).order_by(TranscriptSegment.seq))).all()
    agent = [g.text for g in segs if g.speaker == "agent"]
    assert agent == ["Please hold for the music. Thank you for holding."] * 2
    failed = [e for e in await _events(sqlite_db, call_id) if e[1] == "warning"]
    assert [(e[0], e[3]["reason"], e[3]["cause"]) for e in failed] == [
        ("webhook", "play_failed", "http_status")
    ] * 2


def _tone_share(frame, hz, rate=8000):
    """How much of a frame's energy is within 60 Hz of ``hz``."""
    import numpy as np

    spectrum = np.abs(np.fft.rfft(frame.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(frame), 1 / rate)
    total = spectrum.sum()
    return float(spectrum[np.abs(freqs - hz) < 60].sum() / total) if total else 0.0
