"""A web call in a real browser: Debian's chromium loads the example page from the relay with
a publishable key, presses the ``<relay-call>`` button, and speaks into its (fake) microphone
from a WAV of Piper's speech. The webhook must hear the words; the page must show both sides
live, hear the agent (Whisper over what the page recorded of its remote track), cut the agent
when it talks over it, and closing the tab must end the call ``completed``.

Chromium and the relay's aiortc peer meet over eth0's address, not loopback (Chromium offers
no loopback candidates); the page is on http://localhost, a secure context for the
microphone. Slow (Piper, Whisper, real time) and SQLite only.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import wave
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiohttp import web
from playwright.async_api import async_playwright

from relay import tokens
from relay.app import create_app
from relay.engine.codecs import resample
from relay.events import attach
from relay.handset import synthesize, transcribe
from relay.state import APP_STATE
from relay.store.db import Database
from relay.store.models import Call
from tests.carriers.test_sim_calls import Hook
from tests.pages.test_docs import CHROMIUM, CHROMIUM_ARGS
from tests.transports.support import phone_settings


def _lan_address() -> str | None:
    """An IPv4 address of a non-loopback interface: the only kind of ICE candidate both
    Chromium and aioice offer."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                return ip.ip
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        _lan_address() is None,
        reason="no non-loopback interface: make one (DESIGN.md, a veth pair) to run this",
    ),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "web" / "index.html"
RATE = 48000
HOURS = (
    "Our restaurant opens at noon on weekdays and at ten in the morning on weekends, and "
    "the kitchen keeps serving until half past ten at night, every single day of the year."
)
BOOKED = "Sure, a table for two it is."

# What the page records of the agent, as base64 webm/opus, once asked to stop.
RECORDER = """
(element) => new Promise((resolve) => {
  element.addEventListener("call", (e) => {
    const call = e.detail.call;
    window.__events = [];
    for (const type of ["transcript", "agentstate", "ended"]) {
      call.addEventListener(type, (ev) => window.__events.push({type, ...ev.detail}));
    }
    const recorder = new MediaRecorder(call.remoteStream, {mimeType: "audio/webm;codecs=opus"});
    const chunks = [];
    recorder.ondataavailable = (ev) => chunks.push(ev.data);
    recorder.start(250);
    window.__stopRecording = () => new Promise((done) => {
      recorder.onstop = async () => {
        const bytes = new Uint8Array(await new Blob(chunks).arrayBuffer());
        let text = "";
        for (let i = 0; i < bytes.length; i += 8192) {
          text += String.fromCharCode(...bytes.subarray(i, i + 8192));
        }
        done(btoa(text));
      };
      recorder.stop();
    });
  });
  resolve(true);
})
"""


def microphone_wav(path: Path) -> Path:
    """Silence while the call connects, a question, silence while the agent starts its long
    answer, then the caller talking over it."""

    def say(text: str) -> np.ndarray:
        return resample(synthesize(text), 8000, RATE)

    def quiet(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * RATE), np.int16)

    pcm = np.concatenate(
        [
            quiet(3.0),
            say("What are your opening hours?"),
            quiet(5.0),
            say("Sorry, stop. I want to book a table for two."),
            quiet(1.0),
        ]
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm.tobytes())
    return path


def decode_webm(data: bytes) -> np.ndarray:
    parts = []
    resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray().reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


@pytest.fixture
async def database(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    attach(db)
    yield db
    await db.close()


@pytest.fixture
async def web_relay(database, aiohttp_server, unused_tcp_port, raw_key):
    # Keyed on words Whisper tiny hears reliably ("hours" was once "now").
    hook = Hook({"opening": HOURS, "table": BOOKED})
    hooks = web.Application()
    hooks.router.add_post("/hook", hook.handle)
    hook_server = await aiohttp_server(hooks)
    base = f"http://localhost:{unused_tcp_port}"
    app = create_app(phone_settings(public_url=base), db=database)

    async def example(request: web.Request) -> web.FileResponse:
        return web.FileResponse(EXAMPLE)

    app.router.add_get("/example/", example)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", unused_tcp_port)
    await site.start()
    yield base, hook, hook_server, app
    await runner.cleanup()


async def wait_until(check, within: float):
    deadline = time.monotonic() + within
    while not (result := await check()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)
    return result


async def test_a_browser_talks_to_the_agent(web_relay, database, tmp_path, raw_key):
    base, hook, hook_server, _ = web_relay

    async with aiohttp.ClientSession() as http:
        sk = {"Authorization": f"Bearer {await raw_key('proj-a')}"}
        body = {
            "name": "Ava",
            "webhookUrl": str(hook_server.make_url("/hook")),
            "firstSpeaker": "user",
            "interruptible": True,
        }
        async with http.post(f"{base}/v1/agents", json=body, headers=sk) as resp:
            assert resp.status == 201, await resp.text()
            agent = await resp.json()
    hook.secret = agent["webhookSecret"]
    pk = await raw_key("proj-a", kind="publishable", channels=["web"], agents=[agent["id"]])
    wav = microphone_wav(tmp_path / "mic.wav")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                *CHROMIUM_ARGS,
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}%noloop",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        page = await browser.new_page()
        await page.goto(f"{base}/example/?agent={agent['id']}&key={pk}")
        element = page.locator("relay-call")
        await element.evaluate(RECORDER)
        await page.locator("relay-call button").click()

        async def two_turns():
            return len(hook.requests) >= 2

        await wait_until(two_turns, within=60)
        transcript = page.locator("relay-call li:not(.partial)")

        async def booked():
            lines = await transcript.all_inner_texts()
            return lines if any("table for two it is" in line.lower() for line in lines) else None

        lines = await wait_until(booked, within=30)
        await asyncio.sleep(1.0)  # the end of the reply's audio reaches the recorder
        recorded = base64.b64decode(await page.evaluate("window.__stopRecording()"))
        events = await page.evaluate("window.__events")
        call_id = hook.requests[0]["data"]["callId"]
        closed_at = time.monotonic()
        await page.close()

        async def completed():
            async with database.session() as session:
                row = await session.get(Call, call_id)
            return row.status == "completed"

        await wait_until(completed, within=5)
        ended_after = time.monotonic() - closed_at
        await browser.close()

    # The webhook heard the caller, both times.
    first, second = hook.requests
    assert "opening" in first["data"]["transcript"].lower()
    assert "table" in second["data"]["transcript"].lower()
    # The caller's barge-in cut the long answer: the next turn's history says so.
    cut = [h for h in second["recentHistory"] if h["role"] == "agent"]
    assert cut and cut[-1]["interrupted"] is True
    assert "every single day" not in cut[-1]["content"]
    # The page showed both sides live.
    assert any(line.startswith("You:") and "opening" in line.lower() for line in lines), lines
    assert any(line.startswith("Agent:") for line in lines), lines
    assert {"listening", "thinking", "speaking"} <= {
        e["state"] for e in events if e["type"] == "agentstate"
    }
    # The page heard what the webhook said.
    # Whisper over the page's recording, in two parts (one pass over the whole call once
    # stopped early): the start of the long answer, and the last seconds, the booking.
    audio = decode_webm(recorded)
    tail = 6 * 16000
    answer = transcribe(audio[:-tail], 16000).lower()
    booking = transcribe(audio[-tail:], 16000).lower()
    assert "restaurant" in answer or "noon" in answer, answer
    assert "table for two" in booking, booking
    assert ended_after < 5


@pytest.mark.parametrize(
    ("case", "flags", "message"),
    [
        (
            "mic_denied",
            ["--use-fake-device-for-media-stream", "--deny-permission-prompts"],
            "denied",
        ),
        ("no_microphone", ["--use-fake-ui-for-media-stream"], "No microphone"),
        (
            "token_expired",
            ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
            "expired",
        ),
        (
            "network",
            ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
            "connection",
        ),
    ],
)
async def test_the_element_says_what_went_wrong(
    web_relay, case, flags, message, unused_tcp_port_factory
):
    base, app = web_relay[0], web_relay[3]
    key = app[APP_STATE].signing_key
    join = {
        "token_expired": (f"{base}/media/webrtc", tokens.issue(key, "call_x", "webrtc", -1)),
        "network": (f"http://localhost:{unused_tcp_port_factory()}/media/webrtc", "t"),
    }.get(case, (f"{base}/media/webrtc", "t"))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *flags])
        page = await browser.new_page()
        await page.goto(f"{base}/example/")
        await page.locator("relay-call").evaluate(
            "(el, [url, token]) => {"
            " el.setAttribute('join-url', url); el.setAttribute('token', token); }",
            list(join),
        )
        await page.locator("relay-call button").click()
        error = page.locator("relay-call .error")
        await error.filter(has_text=message).wait_for(timeout=15000)
        state = await page.locator("relay-call").get_attribute("state")
        await browser.close()
    assert state == case
