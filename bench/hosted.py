"""Hosted mode with the embedded model: how fast a caller hears an answer, cold and warm.

Three parts, nothing over the network:

1. the model, in this process: join/verify/load time, then time to first token for a prompt
   never seen (cold) and for the next turn of a conversation whose prefix is cached (warm);
2. calls: a real ``relay serve`` (fresh SQLite database, sim carrier) with a hosted-mode agent
   on the same embedded model. Each caller is a
   :class:`relay.handset.SimHandset`: it places a sim call and speaks recorded
   human-like speech (Piper, synthesized beforehand) over Twilio Media Streams in real time.
   Voice to voice is measured at the caller: its last loud frame sent -> the first loud
   frame of the answer received. The first call of the relay process loads the models and
   is not counted. Per turn the engine's own stages are read back from
   ``GET /v1/calls/{id}/metrics`` (endpointing, STT wait, LLM first chunk, TTS first audio,
   relay overhead);
3. post-call: one analysis job (summary, sentiment, extraction, one criterion) on the first
   counted call's transcript, on the post-call context of this process's model.

    .venv/bin/python bench/hosted.py                 # 2 calls x 6 turns, one after the other
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
import wave
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402
import api as harness  # noqa: E402  (bench/api.py: the relay subprocess)

from hosted_llm import LocalBackend, TextDelta  # noqa: E402
from relay.calls.intelligence import Analyst, Plan  # noqa: E402
from relay.config import Settings  # noqa: E402
from relay.handset import CallReport, SimHandset, synthesize  # noqa: E402
from relay.turns.hosted import hosted_backend  # noqa: E402

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
        "p90": pct(values, 0.9),
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


STAGES = {  # ours -> the key in GET /v1/calls/{id}/metrics perTurn
    "endpointing_ms": "endpointingMs",
    "stt_wait_ms": "sttWaitMs",
    "llm_first_ms": "webhookFirstChunkMs",
    "tts_first_ms": "ttsFirstAudioMs",
    "overhead_ms": "relayOverheadMs",
    "engine_e2e_ms": "e2eMs",
}


def caller_wavs(directory: Path) -> list[Path]:
    paths = []
    for index, text in enumerate(QUESTIONS):
        path = directory / f"q{index}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(synthesize(text).tobytes())
        paths.append(path)
    return paths


async def provision(server: harness.Server, key: str) -> str:
    """A hosted-mode agent bound to a sim number; returns the number."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(base_url=server.base, headers=headers) as http:
        await server.wait_ready(http)
        body = {
            "name": "bench hosted agent",
            "voiceMode": "hosted",
            "systemPrompt": PROMPT,
            "greeting": GREETING,
        }
        return await harness.agent_with_number(http, body)


async def call_details(
    server: harness.Server, key: str, report: CallReport
) -> tuple[list[dict[str, Any]], str]:
    """The engine's per-turn metrics of a call (once stored) and its transcript text."""
    headers = {"Authorization": f"Bearer {key}"}
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(base_url=server.base, headers=headers) as http:
        for _ in range(100):
            async with http.get(f"/v1/calls/{report.call_id}/metrics") as resp:
                if resp.status == 200:
                    body = await resp.json()
                    rows = [r for r in body.get("perTurn", []) if r.get("kind") == "speech"]
                    if len(rows) >= len(report.turns):
                        break
            await asyncio.sleep(0.1)
        async with http.get(f"/v1/calls/{report.call_id}/transcript") as resp:
            text = str((await resp.json()).get("text", "")) if resp.status == 200 else ""
    return rows, text


async def calls_part(
    server: harness.Server, key: str, wavs: list[Path], calls: int
) -> tuple[list[dict[str, Any]], str]:
    number = await provision(server, key)
    handset = SimHandset(
        server.base,
        key,
        listen=False,
        answer_silence_ms=1200,
        answer_timeout_s=60.0,
        greeting_timeout_s=60.0,
    )
    await handset.call(number, wavs[:1])  # loads the models in the relay: not counted
    print("  (warm-up call done)", flush=True)
    turns: list[dict[str, Any]] = []
    transcript = ""
    for index in range(1, calls + 1):
        report = await handset.call(number, list(wavs))
        rows, text = await call_details(server, key, report)
        transcript = transcript or text
        for n, turn in enumerate(report.turns):
            row = rows[n] if n < len(rows) else {}
            entry: dict[str, Any] = {
                "call": index,
                "turn": n + 1,
                "said": turn.said,
                "v2v_ms": turn.latency_ms,
            }
            entry.update({ours: row.get(theirs) for ours, theirs in STAGES.items()})
            turns.append(entry)
    return turns, transcript


async def post_call_part(transcript: str, settings: Settings) -> dict[str, Any]:
    plan = Plan(
        summary=True,
        sentiment=True,
        schema=EXTRACTION,
        criteria=("The agent answered every question",),
    )
    backend = hosted_backend(settings)
    started = time.perf_counter()
    result = await Analyst(backend, transcript).run(plan)
    return {
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        "transcript_lines": len(transcript.splitlines()),
        "summary": result.summary,
        "sentiment": result.sentiment,
        "extraction": result.extraction,
        "evaluation": result.evaluation,
        "errors": result.errors,
    }


def start_relay(workdir: Path, args: argparse.Namespace) -> tuple[harness.Server, str]:
    port = harness._free_port()
    env = harness._relay_env(f"sqlite+aiosqlite:///{workdir}/bench.db", "", port)
    env.update(
        RELAY_SIM_ENABLED="true",
        RELAY_PUBLIC_URL=f"http://127.0.0.1:{port}",
        RELAY_LLM_LOCAL_MODEL=args.model,
        RELAY_LLM_TIMEOUT_SECONDS="120",
    )
    if args.endpointing_ms:
        env["RELAY_ENDPOINTING_DELAY_MS"] = str(args.endpointing_ms)
    return harness.Server(env, port, workdir), harness.create_key(env, workdir)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    settings = Settings(llm_local_model=args.model, llm_timeout_seconds=120)
    endpointing = args.endpointing_ms or settings.endpointing_delay_ms
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "model": args.model,
        "endpointing_ms": endpointing,
        "load_average_start": round(os.getloadavg()[0], 2),
    }
    backend = hosted_backend(settings)
    assert isinstance(backend, LocalBackend)
    report["llm"] = await model_part(backend, args.rounds)
    wavs = await asyncio.get_running_loop().run_in_executor(None, caller_wavs, workdir)
    server, key = start_relay(workdir, args)
    try:
        turns, transcript = await calls_part(server, key, wavs, args.calls)
    except BaseException:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
    report["turns"] = turns
    report["post_call"] = await post_call_part(transcript, settings)
    await backend.aclose()
    report["load_average_end"] = round(os.getloadavg()[0], 2)

    def series(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key) is not None]

    firsts = [t for t in turns if t["turn"] == 1]
    later = [t for t in turns if t["turn"] > 1]
    report["summary"] = {
        "first_turn_v2v_ms": stats(series(firsts, "v2v_ms")),
        "warm_turn_v2v_ms": stats(series(later, "v2v_ms")),
        **{f"warm_turn_{key}": stats(series(later, key)) for key in STAGES},
        "unanswered_turns": sum(t["v2v_ms"] is None for t in turns),
        "target_warm_v2v_p50_ms": 1800,
    }
    return report


def print_report(report: dict[str, Any]) -> None:
    llm = report["llm"]
    print(
        f"hosted mode, embedded {report['model']}, {report['machine']['cpus']} cores, "
        f"endpointing {report['endpointing_ms']} ms, load average "
        f"{report['load_average_start']} at start, {report['load_average_end']} at end"
    )
    print(f"  model load (join/verify/mmap): {llm['load_ms']:.0f} ms")
    print(f"  first token, cold prompt: {stats(llm['cold_first_token_ms'])}")
    print(f"  first token, warm prefix: {stats(llm['warm_first_token_ms'])}")
    columns = ["v2v_ms", *STAGES]
    print("  turns (ms): call turn " + " ".join(f"{c.removesuffix('_ms'):>10}" for c in columns))
    for t in report["turns"]:
        cells = " ".join(f"{t.get(c)!s:>10}" for c in columns)
        print(f"             {t['call']:>4} {t['turn']:>4} {cells}")
    for key, value in report["summary"].items():
        print(f"  {key}: {value}")
    post = report["post_call"]
    print(f"  post-call job: {post['duration_ms']:.0f} ms for {post['transcript_lines']} lines")
    print(f"    summary: {post['summary']!r}")
    print(f"    sentiment: {post['sentiment']}, extraction: {post['extraction']}")
    print(f"    evaluation: {post['evaluation']}, errors: {post['errors']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen-1.5b", choices=["qwen-1.5b", "qwen-0.5b"])
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="cold/warm first-token rounds")
    parser.add_argument(
        "--endpointing-ms", type=int, default=0, help="default: the relay's own setting"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-hosted-bench-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
    print_report(report)
    print(json.dumps(report, default=str))
    return 1 if report["summary"]["unanswered_turns"] else 0


if __name__ == "__main__":
    sys.exit(main())
