"""Hosted mode with the embedded model: how fast a caller hears an answer, cold and warm.

Three parts, all in this process, nothing over the network:

1. the model: join/verify/load time, then time to first token for a prompt never seen
   (cold) and for the next turn of a conversation whose prefix is cached (warm);
2. calls: real hosted calls through the voice engine. A simulated caller speaks (Piper,
   through G.711, in real time), the relay hears it (VAD, Whisper), the embedded model
   answers, Piper speaks. Per turn the engine's own measurements are read back: end of
   caller speech -> first agent audio frame (voice to voice), with its stages;
3. post-call: one analysis job (summary, sentiment, extraction, one criterion) on the
   post-call context.

    .venv/bin/python bench/hosted.py                 # 2 calls x 5 turns
    .venv/bin/python bench/hosted.py --calls 1 --model qwen-0.5b

Prints a readable report, then one line of JSON with the same numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from sqlalchemy import select  # noqa: E402

from hosted_llm import LocalBackend, TextDelta  # noqa: E402
from relay.calls.intelligence import Analyst, Plan, transcript_text  # noqa: E402
from relay.config import Settings  # noqa: E402
from relay.engine import VoiceEngine, models  # noqa: E402
from relay.engine.hosted import hosted_backend  # noqa: E402
from relay.store.db import Database  # noqa: E402
from relay.store.models import TranscriptSegment, TurnMetrics  # noqa: E402
from tests.engine.harness import (  # noqa: E402
    Caller,
    RecordingLine,
    call_setup,
    make_call,
    piper_voice,
)

PROMPT = (
    "You are Ava, the phone assistant of Bella's, an Italian restaurant in Sydney. "
    "Bella's opens at 11 am and closes at 10 pm every day. Lunch is served until 3 pm. "
    "The tasting menu costs 95 dollars per person. There are vegetarian and gluten-free "
    "dishes. Tables for up to eight people can be booked by phone. Street parking is free "
    "after 6 pm. Answer in one short spoken sentence, without lists or emoji."
)
GREETING = "Hi, this is Ava from Bella's. How can I help?"
QUESTIONS = [
    "What time do you open tomorrow?",
    "Do you have vegetarian dishes?",
    "How much is the tasting menu?",
    "Is there parking nearby?",
    "Can I book a table for six people?",
    "Thank you, that is all.",
]
EXTRACTION = {
    "type": "object",
    "properties": {
        "partySize": {"type": ["integer", "null"]},
        "topics": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["partySize", "topics"],
}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def stats(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 0.5),
        "p95": pct(values, 0.95),
        "mean": round(statistics.fmean(values), 1) if values else None,
        "max": round(max(values), 1) if values else None,
    }


async def first_token_ms(backend: LocalBackend, messages: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    async for delta in backend.stream(messages, max_tokens=24, temperature=0.0):
        if isinstance(delta, TextDelta) and delta.text.strip():
            return (time.perf_counter() - started) * 1000
    return (time.perf_counter() - started) * 1000


async def model_part(backend: LocalBackend, rounds: int) -> dict[str, Any]:
    started = time.perf_counter()
    await backend.load()
    load_ms = (time.perf_counter() - started) * 1000
    cold, warm = [], []
    for n in range(rounds):
        system = {"role": "system", "content": f"[session {n} {time.time()}] {PROMPT}"}
        history = [system, {"role": "user", "content": QUESTIONS[0]}]
        cold.append(await first_token_ms(backend, history))
        history.append({"role": "assistant", "content": "We open at 11 am."})
        history.append({"role": "user", "content": QUESTIONS[1]})
        warm.append(await first_token_ms(backend, history))
    return {"load_ms": round(load_ms, 1), "cold_first_token_ms": cold, "warm_first_token_ms": warm}


async def one_call(
    engine: VoiceEngine,
    db: Database,
    http: aiohttp.ClientSession,
    voices: dict[str, Any],
    number: int,
) -> list[dict[str, Any]]:
    line = RecordingLine()
    call_id = await make_call(db)
    setup = call_setup(
        call_id,
        "",
        system_prompt=f"{PROMPT} (Call {number}.)",
        greeting=GREETING,
        first_speaker="agent",
        tts="piper",
        stt="whisper",
    )
    handle = await engine.start_call(replace(setup, voice_mode="hosted"), line, db, http)
    caller = Caller(handle)
    turns: list[dict[str, Any]] = []
    try:
        await line.wait_audio(0.0, within=60)
        await line.wait_quiet(0.8, within=60)
        for index, question in enumerate(QUESTIONS):
            ended = await caller.say(voices[question])
            heard = await line.wait_audio(ended, within=90)
            await line.wait_quiet(1.0, within=120)
            turns.append({"turn": index + 1, "heard_after_ms": round((heard - ended) * 1000, 1)})
    finally:
        await caller.stop()
        await handle.end()
    async with db.session() as session:
        rows = (
            await session.scalars(
                select(TurnMetrics).where(TurnMetrics.call_id == call_id).order_by(TurnMetrics.id)
            )
        ).all()
    speech = [r.values for r in rows if r.values.get("kind") == "speech"]
    for turn, values in zip(turns, speech, strict=False):
        turn.update(
            {
                k: values.get(k)
                for k in (
                    "e2e_ms",
                    "endpointing_ms",
                    "stt_wait_ms",
                    "webhook_first_chunk_ms",
                    "tts_first_audio_ms",
                    "relay_overhead_ms",
                )
            }
        )
        turn["call"] = number
    return turns


async def post_call_part(db: Database, settings: Settings) -> dict[str, Any]:
    async with db.session() as session:
        segments = list(
            (
                await session.scalars(
                    select(TranscriptSegment).order_by(
                        TranscriptSegment.call_id, TranscriptSegment.seq
                    )
                )
            ).all()
        )
    first_call = [s for s in segments if s.call_id == segments[0].call_id] if segments else []
    plan = Plan(
        summary=True,
        sentiment=True,
        schema=EXTRACTION,
        criteria=("The agent answered every question",),
    )
    backend = hosted_backend(settings)
    started = time.perf_counter()
    result = await Analyst(backend, transcript_text(first_call)).run(plan)
    return {
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        "segments": len(first_call),
        "summary": result.summary,
        "sentiment": result.sentiment,
        "extraction": result.extraction,
        "evaluation": result.evaluation,
        "errors": result.errors,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen-1.5b", choices=["qwen-1.5b", "qwen-0.5b"])
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="cold/warm first-token rounds")
    args = parser.parse_args()

    settings = Settings(llm_local_model=args.model, llm_timeout_seconds=120)
    backend = hosted_backend(settings)
    assert isinstance(backend, LocalBackend)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "model": args.model,
    }
    report["llm"] = await model_part(backend, args.rounds)

    models.warm(stt="whisper", tts="piper", vad_silence_s=settings.early_stt_silence_ms / 1000)
    voices = {q: piper_voice(q) for q in QUESTIONS}
    engine = VoiceEngine(settings)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{tmp}/bench.db")
        await db.migrate()
        turns: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http:
            for number in range(1, args.calls + 1):
                turns += await one_call(engine, db, http, voices, number)
        await engine.close()
        report["turns"] = turns
        report["post_call"] = await post_call_part(db, settings)
        await db.close()
    await backend.aclose()

    firsts = [t for t in turns if t["turn"] == 1]
    later = [t for t in turns if t["turn"] > 1]

    def series(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key) is not None]

    report["summary"] = {
        "first_turn_e2e_ms": stats(series(firsts, "e2e_ms")),
        "warm_turn_e2e_ms": stats(series(later, "e2e_ms")),
        "warm_turn_llm_first_chunk_ms": stats(series(later, "webhook_first_chunk_ms")),
        "warm_turn_tts_first_audio_ms": stats(series(later, "tts_first_audio_ms")),
        "warm_turn_stt_wait_ms": stats(series(later, "stt_wait_ms")),
        "warm_turn_relay_overhead_ms": stats(series(later, "relay_overhead_ms")),
        "target_warm_e2e_p50_ms": 1800,
    }
    llm = report["llm"]
    print(f"hosted mode, embedded {args.model}, {report['machine']['cpus']} cores")
    print(f"  model load (join/verify/mmap): {llm['load_ms']:.0f} ms")
    print(f"  first token, cold prompt: {stats(llm['cold_first_token_ms'])}")
    print(f"  first token, warm prefix: {stats(llm['warm_first_token_ms'])}")
    print("  turns (ms): call turn  e2e  endpoint  stt_wait  llm_first  tts_first  overhead")
    for t in turns:
        print(
            f"             {t['call']:>4} {t['turn']:>4} {t.get('e2e_ms')!s:>6} "
            f"{t.get('endpointing_ms')!s:>8} {t.get('stt_wait_ms')!s:>9} "
            f"{t.get('webhook_first_chunk_ms')!s:>9} {t.get('tts_first_audio_ms')!s:>9} "
            f"{t.get('relay_overhead_ms')!s:>9}"
        )
    for key, value in report["summary"].items():
        print(f"  {key}: {value}")
    post = report["post_call"]
    print(f"  post-call job: {post['duration_ms']:.0f} ms for {post['segments']} segments")
    print(f"    summary: {post['summary']!r}")
    print(f"    sentiment: {post['sentiment']}, extraction: {post['extraction']}")
    print(f"    evaluation: {post['evaluation']}, errors: {post['errors']}")
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    asyncio.run(main())
