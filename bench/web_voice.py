"""Web-call voice benchmark: how soon a page hears the agent, and how many web calls one relay
holds, against a real ``relay serve`` subprocess with the real engines.

The sibling of ``bench/voice.py`` (same instant NDJSON webhook, same lines, same capacity
rule) for ``connectionType: "webrtc"``. Each caller is a :class:`relay.handset.WebPage`: an
aiortc peer that creates the call, sends its WHIP offer and speaks Piper's wideband voice at
48 kHz over Opus in real time, as a browser would. Per turn, measured at the page:

* voice to voice: the last loud 20 ms frame handed to the page's Opus encoder -> the first
  loud frame decoded from the relay's track (p50/p90/p99);
* the relay process's CPU (100% = one core) and RSS.

A step runs N calls at once, their starts spread over ``--stagger`` seconds. The ramp runs
1, 2, 4, 8, 10, 12, 16... calls and stops at the first step that fails: capacity is the most
calls whose p90 stays within ``--capacity-factor`` (1.5) x one call's, with every turn
answered. The pages run in this process (Opus encode and decode, ICE, DTLS in Python) and
share the machine's cores with the relay.

    .venv/bin/python bench/web_voice.py                 # 1 call x 4 turns, then the ramp
    .venv/bin/python bench/web_voice.py --quick         # 1 call, 2 turns: a smoke run

Prints a readable report, then one line of JSON with the same numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import api as harness  # noqa: E402  (bench/api.py: the relay subprocess, stats)
import voice as phone_bench  # noqa: E402  (bench/voice.py: the webhook, lines)
import voice_report  # noqa: E402  (bench/voice_report.py: percentiles, figures)

from relay.engine import speech  # noqa: E402
from relay.engine.codecs import resample  # noqa: E402
from relay.handset import WebPage  # noqa: E402

RAMP = [1, 2, 4, 8, 10, 12, 16, 20]
LOUD = 300.0
ANSWER_TIMEOUT_S = 15.0


@dataclass
class Step:
    calls: int
    turns_per_call: int
    turns: int = 0
    unanswered: int = 0
    failed_calls: int = 0
    v2v_p50_ms: float | None = None
    v2v_p90_ms: float | None = None
    v2v_p99_ms: float | None = None
    v2v_max_ms: float | None = None
    # the engine's own end of speech -> first audio to the line (GET /v1/calls/{id}/metrics):
    # what the page measures beyond it is the WebRTC path (Opus, jitter buffers, network)
    engine_e2e_p50_ms: float | None = None
    engine_e2e_p90_ms: float | None = None
    premature_turns: int = 0
    relay_cpu_pct: float = 0.0
    callers_cpu_pct: float = 0.0
    relay_rss_mib: float = 0.0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)


def wideband(text: str) -> np.ndarray:
    """A caller's line as a browser's microphone would send it: Piper at 48 kHz."""
    pcm = np.concatenate(speech.piper_sentences(text, steady=True))
    return resample(pcm, speech.piper_rate(), 48000)


async def agent_turns_done(page: WebPage, count: int) -> None:
    await page.wait_event(
        lambda e: (
            sum(1 for x in page.events if x.get("role") == "agent" and x.get("final")) >= count
        ),
        within=ANSWER_TIMEOUT_S * 2,
    )


class Bench:
    def __init__(
        self,
        server: harness.Server,
        key: str,
        agent_id: str,
        lines: list[Any],
        hook: phone_bench.InstantWebhook,
    ):
        self.hook = hook
        self.server = server
        self.key = key
        self.agent_id = agent_id
        self.lines = lines

    async def _one_call(
        self, delay: float, turns: int, offset: int
    ) -> tuple[list[float], int, str]:
        await asyncio.sleep(delay)
        headers = {"Authorization": f"Bearer {self.key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            resp = await http.post(
                f"{self.server.base}/v1/calls",
                json={"agentId": self.agent_id, "connectionType": "webrtc"},
            )
            call = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"create: {resp.status} {call}")
            page = await WebPage.join(http, call["joinUrl"], call["token"])
            latencies: list[float] = []
            unanswered = 0
            try:
                await agent_turns_done(page, 1)  # the greeting
                for i in range(turns):
                    page.mic.say(self.lines[(offset + i) % len(self.lines)])
                    await page.mic.spoken.wait()
                    spoke = page.mic.last_loud_at
                    answer = await self._first_answer(page, spoke)
                    if answer is None:
                        unanswered += 1
                        continue
                    latencies.append((answer - spoke) * 1000)
                    await agent_turns_done(page, i + 2)
                    await asyncio.sleep(0.5)
            finally:
                await http.delete(
                    f"{self.server.base}{page.location}",
                    headers={"Authorization": f"Bearer {call['token']}"},
                )
                await page.close()
        return latencies, unanswered, call["id"]

    async def _engine_e2e(self, call_id: str, turns: int) -> list[float]:
        headers = {"Authorization": f"Bearer {self.key}"}
        async with aiohttp.ClientSession(base_url=self.server.base, headers=headers) as http:
            for _ in range(100):
                async with http.get(f"/v1/calls/{call_id}/metrics") as resp:
                    rows = [r for r in (await resp.json()).get("perTurn", [])]
                speech_rows = [r for r in rows if r.get("kind") == "speech"]
                if len(speech_rows) >= turns:
                    break
                await asyncio.sleep(0.1)
        return [float(r["e2eMs"]) for r in speech_rows if isinstance(r.get("e2eMs"), int | float)]

    @staticmethod
    async def _first_answer(page: WebPage, since: float) -> float | None:
        deadline = time.perf_counter() + ANSWER_TIMEOUT_S
        while time.perf_counter() < deadline:
            found = page.first_loud_after(since, level=LOUD)
            if found is not None:
                return found
            await asyncio.sleep(0.005)
        return None

    async def step(self, calls: int, turns: int, stagger: float) -> Step:
        result = Step(calls=calls, turns_per_call=turns)
        pid = self.server.proc.pid
        cpu0, wall0, own0 = harness._cpu_seconds(pid), time.monotonic(), time.process_time()
        spread = stagger / calls if calls > 1 else 0.0
        webhook_turns = self.hook.turns
        outcomes = await asyncio.gather(
            *(self._one_call(i * spread, turns, i) for i in range(calls)), return_exceptions=True
        )
        result.seconds = round(time.monotonic() - wall0, 1)
        result.relay_cpu_pct = round(100 * (harness._cpu_seconds(pid) - cpu0) / result.seconds, 1)
        result.callers_cpu_pct = round(100 * (time.process_time() - own0) / result.seconds, 1)
        result.relay_rss_mib = round(harness._rss_mib(pid)[0], 1)
        engine: list[float] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                result.failed_calls += 1
                result.unanswered += turns
                result.errors.append(repr(outcome)[:200])
                continue
            latencies, unanswered, call_id = outcome
            result.turns += turns
            result.unanswered += unanswered
            result.latencies_ms += latencies
            engine += await self._engine_e2e(call_id, turns)
        # The greeting is spoken, not a webhook turn; a turn ended inside a line is one more.
        result.premature_turns = max(0, self.hook.turns - webhook_turns - result.turns)
        lat = result.latencies_ms
        pct = voice_report.pct
        result.engine_e2e_p50_ms, result.engine_e2e_p90_ms = pct(engine, 50), pct(engine, 90)
        result.v2v_p50_ms, result.v2v_p90_ms = pct(lat, 50), pct(lat, 90)
        result.v2v_p99_ms = pct(lat, 99)
        result.v2v_max_ms = round(max(lat), 1) if lat else None
        return result


def passes(step: Step, base: Step, factor: float) -> bool:
    if step.unanswered or step.failed_calls or step.v2v_p90_ms is None:
        return False
    return base.v2v_p90_ms is not None and step.v2v_p90_ms <= factor * base.v2v_p90_ms


def print_step(name: str, s: Step, verdict: str = "") -> None:
    ms = voice_report.ms
    print(
        f"  {name}: {s.calls} calls x {s.turns_per_call} turns: answered "
        f"{s.turns - s.unanswered}/{s.calls * s.turns_per_call}; voice to voice at the page ms "
        f"p50 {ms(s.v2v_p50_ms)} p90 {ms(s.v2v_p90_ms)} p99 {ms(s.v2v_p99_ms)}; engine e2e p50 "
        f"{ms(s.engine_e2e_p50_ms)} p90 {ms(s.engine_e2e_p90_ms)}; premature turn ends "
        f"{s.premature_turns}; relay CPU "
        f"{s.relay_cpu_pct:.0f}%, RSS {s.relay_rss_mib:.0f} MiB; pages CPU "
        f"{s.callers_cpu_pct:.0f}%" + (f"  [{verdict}]" if verdict else ""),
        flush=True,
    )
    if s.errors:
        print(f"    errors: {s.errors[:3]}", flush=True)


async def run(server: harness.Server, key: str, args: argparse.Namespace) -> dict[str, Any]:
    hook = phone_bench.InstantWebhook()
    await hook.start()
    try:
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(base_url=server.base, headers=headers) as http:
            await server.wait_ready(http)
            body = {"name": "web bench", "webhookUrl": hook.url, "greeting": phone_bench.GREETING}
            async with http.post("/v1/agents", json=body) as resp:
                agent_id = (await resp.json())["id"]
        loop = asyncio.get_running_loop()
        lines = [await loop.run_in_executor(None, wideband, t) for t in phone_bench.LINES]
        gc.freeze()
        bench = Bench(server, key, agent_id, lines, hook)
        await bench.step(1, 1, 0.0)  # the first call of the relay loads its models
        print("  (warm-up call done)", flush=True)
        main = await bench.step(args.calls, args.turns, args.stagger)
        print_step("load", main)
        ramp: list[Step] = []
        capacity = None
        if args.ramp:
            print(f"\n  capacity ramp ({args.turns} turns per call):", flush=True)
            base: Step | None = None
            for calls in [n for n in RAMP if n <= args.ramp_max]:
                step = (
                    main
                    if calls == args.calls
                    else await bench.step(calls, args.turns, args.stagger)
                )
                ramp.append(step)
                base = base or step
                ok = passes(step, base, args.capacity_factor)
                print_step(f"{calls:>2} calls", step, "pass" if ok else "FAIL")
                if not ok:
                    break
                capacity = calls
    finally:
        await hook.stop()
    return {
        "benchmark": "web_voice",
        "endpointing_ms": args.endpointing_ms,
        "load": asdict(main),
        "ramp": [asdict(s) for s in ramp],
        "capacity_calls": capacity,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1, help="simultaneous calls (1)")
    parser.add_argument("--turns", type=int, default=4, help="caller turns per call (4)")
    parser.add_argument("--ramp", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ramp-max", type=int, default=20)
    parser.add_argument("--capacity-factor", type=float, default=1.5)
    parser.add_argument("--stagger", type=float, default=3.0)
    parser.add_argument("--endpointing-ms", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="1 call, 2 turns, no ramp")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.turns, args.ramp = 1, 2, False
    cores = os.cpu_count() or 1
    print("relay web-call voice benchmark")
    print(
        f"  {platform.python_implementation()} {platform.python_version()}, {cores} CPU cores; "
        f"load average at start {os.getloadavg()[0]:.1f}; endpointing {args.endpointing_ms} ms; "
        "aiortc pages in this process, Opus 48 kHz, instant NDJSON webhook",
        flush=True,
    )
    with phone_bench.database(None) as (url, schema):
        with tempfile.TemporaryDirectory(prefix="relay-web-bench-") as tmp:
            workdir = Path(tmp)
            port = harness._free_port()
            env = phone_bench.relay_env(url, schema, port, args)
            key = harness.create_key(env, workdir)
            server = harness.Server(env, port, workdir)
            try:
                summary = asyncio.run(run(server, key, args))
            except BaseException:
                print(server.log_tail(), file=sys.stderr)
                raise
            finally:
                server.stop()
    if summary["capacity_calls"] is not None:
        print(f"\n  capacity: {summary['capacity_calls']} simultaneous web calls")
    for step in [summary["load"], *summary["ramp"]]:
        step.pop("latencies_ms", None)
    summary["load_average_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(summary, separators=(",", ":")))
    return 1 if summary["load"]["unanswered"] or summary["load"]["failed_calls"] else 0


if __name__ == "__main__":
    sys.exit(main())
