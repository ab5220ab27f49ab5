"""Turn-taking quality, from the caller's side: a real ``relay serve`` with the real engines,
sim calls over the Twilio Media Streams protocol (:class:`relay.handset.SimHandset`), caller
speech from Piper.

Four kinds of round, each on a call of its own (``--rounds`` of each), after the greeting:

* ``normal``: the caller asks, the agent answers. Voice to voice: the caller's last loud
  frame sent -> the answer's first loud frame received.
* ``interrupt``: 600 ms into the answer the caller starts a sentence. Barge-in reaction:
  the interruption's first loud frame sent -> the last loud agent frame received before the
  agent went quiet (300 ms without a loud frame).
* ``backchannel``: 600 ms into the answer the caller says "Yeah." / "Okay." / "Uh-huh.".
  Cut: the relay sent a ``clear``, or the webhook got a turn for it. Words lost: words of
  the reply that Whisper does not hear in the caller's received audio. The longest pause in
  the answer, and whether the answer resumed within 500 ms of the caller's last loud frame.
* ``midpause``: "I'd like a table for ... two people ..." with a 700 ms pause mid-sentence.
  A false turn: the webhook got the first half as a turn of its own.

The webhook answers at once (a local NDJSON server): every millisecond is the relay's;
``--webhook-delay-ms`` makes it think first. ``--speculative`` sets the agent's
``speculativeTurns`` (the turn starts on the early transcript; a superseded request is not
counted as a turn).

    .venv/bin/python bench/quality.py                 # 5 rounds of each
    .venv/bin/python bench/quality.py --rounds 2      # quicker

Prints a readable report, then one line of JSON with the same numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import api as harness  # noqa: E402  (bench/api.py: the relay subprocess, stats)
import voice as voice_bench  # noqa: E402  (bench/voice.py: database, environment)

from relay.handset import SimHandset, synthesize, transcribe  # noqa: E402
from relay.handset.voice import MediaLine  # noqa: E402

GREETING = "Hello, how can I help?"
QUESTIONS = [
    "What are your opening hours?",
    "Can you tell me about the menu?",
    "How do I get to the restaurant?",
    "What do you have for children?",
    "Tell me about the wine list.",
]
INTERRUPTION = "Sorry, I need a table for four people tonight."
BACKCHANNELS = ["Yeah.", "Okay.", "Uh-huh."]
# The first half ends on a word a sentence cannot end with: what relay.engine.turn_end
# recognizes. A pause after a complete-sounding half ("I'd like to book") is not held.
PAUSE_HALVES = ("I'd like a table for", "two people tomorrow evening.")
INTO_REPLY_S = 0.6
QUIET_S = 0.3
RESUME_S = 0.5


TOPICS = ["garden", "kitchen", "terrace", "cellar", "bakery", "orchard", "library", "harbour"]


def answer(turn: int) -> str:
    """A long answer (several seconds), worded anew every turn (no synthesis cache), with
    no numbers (Whisper writes them as digits, which would count as lost words)."""
    topic = TOPICS[turn % len(TOPICS)]
    return (
        f"Let me tell you about the {topic} in some detail. It opens late in the morning "
        f"and closes at night, and on weekends the {topic} also serves a quiet breakfast."
    )


class Webhook(harness.LocalHook):
    """The developer's server (at once, or after ``delay`` s of thinking), keeping every
    transcript it was sent; a speculative turn counts when it is not superseded."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.transcripts: list[str] = []
        self.turn_ids: list[str] = []
        self.speculative = 0
        self.answers: list[str] = []  # every reply sent, superseded or not

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        event = await request.json()
        data = event.get("data", {})
        if data.get("supersedes") in self.turn_ids:  # the caller went on: not a turn
            del self.transcripts[self.turn_ids.index(data["supersedes"])]
            self.turn_ids.remove(data["supersedes"])
        self.speculative += bool(data.get("speculative"))
        self.transcripts.append(data.get("transcript") or "")
        self.turn_ids.append(data.get("turnId") or "")
        if self.delay:
            await asyncio.sleep(self.delay)
        text = answer(len(self.answers) + 1)
        self.answers.append(text)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(json.dumps({"text": text}).encode() + b"\n")
        await resp.write_eof()
        return resp


@dataclass
class Results:
    v2v_ms: list[float] = field(default_factory=list)
    barge_in_ms: list[float] = field(default_factory=list)
    backchannels: int = 0
    backchannel_cuts: int = 0
    words_lost: list[int] = field(default_factory=list)
    baseline_lost: list[int] = field(default_factory=list)  # Whisper's own misses, no overlap
    pause_ms: list[float] = field(default_factory=list)
    resumed_late: int = 0
    midpauses: int = 0
    false_turns: int = 0
    false_turn_transcripts: list[list[str]] = field(default_factory=list)
    missed: int = 0  # rounds with no answer at all
    unmeasured: int = 0  # interruptions that came when the agent was already quiet


def pct(values: list[float], q: float) -> float | None:
    return round(harness._percentile(sorted(values), q), 1) if values else None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def lost_words(said: str, heard: str) -> int:
    """Words of ``said`` missing from ``heard`` (a multiset difference)."""
    left = _words(heard)
    lost = 0
    for word in _words(said):
        if word in left:
            left.remove(word)
        else:
            lost += 1
    return lost


async def wait_answer(line: MediaLine, since: float, within: float = 20.0) -> float | None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        first = line.first_loud_after(since)
        if first is not None:
            return first
        await asyncio.sleep(0.02)
    return None


async def wait_done(line: MediaLine, quiet: float = 2.5, within: float = 30.0) -> float:
    """Until no loud agent audio for ``quiet`` seconds; the last loud frame's time."""
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        last = line.loud_received[-1] if line.loud_received else 0.0
        if time.perf_counter() - last >= quiet:
            return last
        await asyncio.sleep(0.05)
    return line.loud_received[-1]


async def say(line: MediaLine, pcm: np.ndarray) -> tuple[float, float]:
    """Speak; (first loud frame sent, last loud frame sent)."""
    before = len(line.loud_sent)
    line.say(pcm)
    await line.spoken.wait()
    sent = line.loud_sent[before:]
    return (sent[0], sent[-1]) if sent else (time.perf_counter(), time.perf_counter())


def went_quiet(line: MediaLine, since: float) -> float | None:
    """The last loud agent frame after ``since`` followed by ``QUIET_S`` without one."""
    loud = [t for t in line.loud_received if t >= since]
    if not loud:  # the agent was already quiet: no reaction to measure
        return None
    for a, b in zip(loud, [*loud[1:], float("inf")], strict=True):
        if b - a >= QUIET_S:
            return a
    return None


def gaps(line: MediaLine, start: float, end: float) -> list[tuple[float, float]]:
    times = [t for t, _ in line.received if start <= t <= end]
    return [(a, b - a) for a, b in zip(times, times[1:], strict=False) if b - a > 0.06]


class Quality:
    def __init__(self, handset: SimHandset, number: str, hook: Webhook) -> None:
        self.handset = handset
        self.number = number
        self.hook = hook
        self.r = Results()
        self.audio: dict[str, np.ndarray] = {}

    def pcm(self, text: str) -> np.ndarray:
        if text not in self.audio:
            # The same audio every run: runs with different settings hear the same caller.
            self.audio[text] = synthesize(text, steady=True)
        return self.audio[text]

    def midpause(self) -> np.ndarray:
        first, second = (self.pcm(t) for t in PAUSE_HALVES)
        return np.concatenate([first, np.zeros(int(0.7 * 8000), np.int16), second])

    async def run(self, kind: str, rounds: int) -> None:
        async with self.handset.connected(self.number) as (_, line):
            await wait_answer(line, 0.0, 10.0)
            await wait_done(line)
            for i in range(rounds):
                await getattr(self, kind)(line, i)

    async def normal(self, line: MediaLine, i: int) -> None:
        _, end = await say(line, self.pcm(QUESTIONS[i % len(QUESTIONS)]))
        first = await wait_answer(line, end)
        if first is None:
            self.r.missed += 1
            return
        self.r.v2v_ms.append((first - end) * 1000)
        last = await wait_done(line)
        self.r.baseline_lost.append(await self.lost(line, first, last))

    async def lost(self, line: MediaLine, first: float, last: float) -> int:
        """Words of this round's answer the caller did not hear (by Whisper)."""
        heard = await asyncio.get_running_loop().run_in_executor(
            None, transcribe, line.audio_between(first - 0.05, last + 0.05)
        )
        return lost_words(self.hook.answers[-1], heard)

    async def interrupt(self, line: MediaLine, i: int) -> None:
        _, end = await say(line, self.pcm(QUESTIONS[i % len(QUESTIONS)]))
        first = await wait_answer(line, end)
        if first is None:
            self.r.missed += 1
            return
        await asyncio.sleep(max(0.0, first + INTO_REPLY_S - time.perf_counter()))
        began, _ = await say(line, self.pcm(INTERRUPTION))
        await wait_done(line)
        quiet = went_quiet(line, began)
        if quiet is None:
            self.r.unmeasured += 1
        else:
            self.r.barge_in_ms.append(max(0.0, quiet - began) * 1000)

    async def backchannel(self, line: MediaLine, i: int) -> None:
        turns = len(self.hook.transcripts)
        clears = len(line.clears)
        _, end = await say(line, self.pcm(QUESTIONS[i % len(QUESTIONS)]))
        first = await wait_answer(line, end)
        if first is None:
            self.r.missed += 1
            return
        await asyncio.sleep(max(0.0, first + INTO_REPLY_S - time.perf_counter()))
        began, ack_end = await say(line, self.pcm(BACKCHANNELS[i % len(BACKCHANNELS)]))
        last = await wait_done(line)
        self.r.backchannels += 1
        cut = len(line.clears) > clears or len(self.hook.transcripts) > turns + 1
        self.r.backchannel_cuts += cut
        self.r.words_lost.append(await self.lost(line, first, last))
        pauses = [(at, size) for at, size in gaps(line, first, last) if at >= began - 0.2]
        if pauses:
            at, size = max(pauses, key=lambda p: p[1])
            self.r.pause_ms.append(size * 1000)
            self.r.resumed_late += at + size - ack_end > RESUME_S
        else:
            self.r.pause_ms.append(0.0)

    async def midpause_round(self, line: MediaLine, i: int) -> None:
        turns = len(self.hook.transcripts)
        _, end = await say(line, self.midpause())
        first = await wait_answer(line, end)
        await wait_done(line)
        self.r.midpauses += 1
        new = self.hook.transcripts[turns:]
        if len(new) > 1 or (new and "table" not in new[0].lower()):
            self.r.false_turns += 1
            self.r.false_turn_transcripts.append(new)
        if first is None:
            self.r.missed += 1


KINDS = {  # a kind of round: the method that plays it
    "normal": "normal",
    "interrupt": "interrupt",
    "backchannel": "backchannel",
    "midpause": "midpause_round",
}


async def run(server: harness.Server, key: str, args: argparse.Namespace) -> dict[str, Any]:
    hook = Webhook(args.webhook_delay_ms / 1000)
    await hook.start()
    try:
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(base_url=server.base, headers=headers) as http:
            await server.wait_ready(http)
            body = {
                "name": "quality agent",
                "webhookUrl": hook.url,
                "greeting": GREETING,
                "interruptionSensitivity": args.sensitivity,
                "unfinishedTurnMs": args.unfinished_ms,
                "speculativeTurns": args.speculative,
            }
            number = await harness.agent_with_number(http, body)
        handset = SimHandset(server.base, key, listen=False)
        q = Quality(handset, number, hook)
        await asyncio.get_running_loop().run_in_executor(None, q.midpause)  # synthesize early
        await q.run("normal", 1)  # warm-up: models load on the first call
        q.r = Results()
        for kind in args.kinds:
            print(f"  {kind}: {args.rounds} rounds", flush=True)
            await q.run(KINDS[kind], args.rounds)
    finally:
        await hook.stop()
    r = q.r
    return {
        "benchmark": "quality",
        "endpointing_ms": args.endpointing_ms,
        "sensitivity": args.sensitivity,
        "unfinished_turn_ms": args.unfinished_ms,
        "speculative_turns": args.speculative,
        "webhook_delay_ms": args.webhook_delay_ms,
        "speculative_requests": hook.speculative,
        "rounds": args.rounds,
        "barge_in_ms": {"p50": pct(r.barge_in_ms, 50), "p90": pct(r.barge_in_ms, 90)},
        "barge_in_rounds": len(r.barge_in_ms),
        "barge_in_agent_already_quiet": r.unmeasured,
        "backchannel_cut_rate": round(r.backchannel_cuts / r.backchannels, 3)
        if r.backchannels
        else None,
        "backchannel_words_lost": r.words_lost,
        "normal_words_lost": r.baseline_lost,
        "backchannel_pause_ms": [round(p) for p in r.pause_ms],
        "backchannel_resumed_late": r.resumed_late,
        "midpause_false_turn_rate": round(r.false_turns / r.midpauses, 3) if r.midpauses else None,
        "false_turn_transcripts": r.false_turn_transcripts,
        "v2v_ms": {"p50": pct(r.v2v_ms, 50), "p90": pct(r.v2v_ms, 90)},
        "missed_answers": r.missed,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each kind (5)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--endpointing-ms", type=int, default=400)
    parser.add_argument("--sensitivity", choices=["low", "medium", "high"], default="medium")
    parser.add_argument("--unfinished-ms", type=int, default=700, help="unfinishedTurnMs (700)")
    parser.add_argument(
        "--speculative", action="store_true", help="the agent sets speculativeTurns: true"
    )
    parser.add_argument(
        "--webhook-delay-ms", type=int, default=0, help="the webhook thinks this long (0)"
    )
    parser.add_argument("--database-url", default=os.environ.get("RELAY_BENCH_DATABASE_URL"))
    parser.add_argument("--relay-log", type=Path, help="keep the relay's log (INFO) here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print("relay turn-taking quality benchmark")
    print(
        f"  {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores; load average at start {os.getloadavg()[0]:.1f}; "
        f"endpointing {args.endpointing_ms} ms; interruptionSensitivity {args.sensitivity}; "
        f"speculativeTurns {str(args.speculative).lower()}; "
        f"webhook delay {args.webhook_delay_ms} ms",
        flush=True,
    )
    with voice_bench.database(args.database_url) as (url, schema):
        with tempfile.TemporaryDirectory(prefix="relay-quality-") as tmp:
            workdir = Path(tmp)
            port = harness._free_port()
            env = voice_bench.relay_env(url, schema, port, args)
            if args.relay_log:
                env["RELAY_LOG_LEVEL"] = "INFO"
            key = harness.create_key(env, workdir)
            server = harness.Server(env, port, workdir)
            try:
                summary = asyncio.run(run(server, key, args))
            except BaseException:
                print(server.log_tail(), file=sys.stderr)
                raise
            finally:
                server.stop()
                if args.relay_log:
                    shutil.copyfile(server.log_path, args.relay_log)
    summary["load_average_end"] = round(os.getloadavg()[0], 2)
    b, v = summary["barge_in_ms"], summary["v2v_ms"]
    print(f"  barge-in reaction  p50 {b['p50']} ms  p90 {b['p90']} ms")
    print(
        f"  backchannels       cut rate {summary['backchannel_cut_rate']}, words lost "
        f"{summary['backchannel_words_lost']} (Whisper alone, normal rounds: "
        f"{summary['normal_words_lost']}), pauses {summary['backchannel_pause_ms']} ms, "
        f"resumed later than {RESUME_S * 1000:.0f} ms after the caller: "
        f"{summary['backchannel_resumed_late']}"
    )
    print(f"  mid-sentence pause false turn rate {summary['midpause_false_turn_rate']}")
    print(f"  voice to voice     p50 {v['p50']} ms  p90 {v['p90']} ms")
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
