"""Voice benchmark: how soon a caller hears the agent, how steady its audio is, how many
calls one relay holds, against a real ``relay serve`` subprocess with the real engines.

A fresh database (a SQLite file by default; with ``--database-url postgresql://...`` a
schema of its own, dropped afterwards) and a relay with the sim carrier enabled. A webhook
agent whose webhook is *instant*: a local aiohttp server in this process that answers every
``agent.message`` at once with two NDJSON chunks, worded anew every turn, so every
millisecond measured is ours (VAD, endpointing, STT, TTS, the relay), none of it the
developer's.

Callers are :class:`relay.handset.SimHandset` s: each places a sim call and
speaks the Twilio Media Streams protocol, sending recorded human-like speech (Piper,
synthesized once before the run) in real time, 20 ms mu-law frames. Per turn:

* voice to voice: the caller's last loud frame sent -> the first loud frame of the answer
  received, measured at the caller (p50/p90/p99);
* its breakdown, as the engine stored it (``GET /v1/calls/{id}/metrics``): endpointing,
  STT (and how long the turn waited for it after endpointing), webhook first chunk, TTS
  first audio, relay overhead (everything else), and the engine's own end-to-end;
* pacing: the gaps between the answer's 20 ms frames as they arrive at the caller,
  ``|gap - 20 ms|`` p99 (stalls mid-answer count, silence between answers does not);
* the relay process's CPU (100% = one core) and RSS.

A step runs N calls at once, their starts spread over ``--stagger`` seconds (callers do not
dial in lockstep). The capacity ramp runs steps of 1, 2, 4, 8, 12, 16... calls and stops at
the first step that fails: capacity is the most calls whose voice-to-voice p90 stays within
``--capacity-factor`` (1.5) x one call's, with no turn unanswered.

    .venv/bin/python bench/voice.py                      # 4 calls x 4 turns, then the ramp
    .venv/bin/python bench/voice.py --calls 8 --no-ramp
    .venv/bin/python bench/voice.py --quick               # 1 call, 1 turn: a smoke run
    .venv/bin/python bench/voice.py --carrier plivo       # the same over Plivo's protocol
    .venv/bin/python bench/voice.py --carrier telnyx      # ... over Telnyx's media streaming
    .venv/bin/python bench/voice.py --workers 1 2         # relay serve --workers 1, then 2

``--workers 1 2`` runs the whole benchmark once per count, in turn, in one run, each on a
fresh PostgreSQL schema (``--database-url``, default the local test database; SQLite allows
one worker): ``relay serve --workers N``, whose N nodes share the port. Each worker loads its
speech models on its first call, so the warm-up places calls until every node has run one
(``GET /v1/nodes`` says which node runs which). The relay's CPU and RSS are those of all its
processes (the parent that only watches included; RSS counts pages they share once each).

With ``--carrier plivo`` or ``telnyx`` the number is a number of a project's carrier account
at a fake of that carrier in this process (``bench/voice_carriers.py``): each call reaches
the relay as that carrier's signed webhook and its audio flows over that carrier's media
protocol, so the figures include that path.

Prints a readable report, then one line of JSON with the same numbers. The callers run in
this process and share the machine's cores with the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import api as harness  # noqa: E402  (bench/api.py: the relay subprocess, stats)
from voice_carriers import CarrierSide, carrier_side  # noqa: E402
from voice_report import STAGES, Step, passes, pct, print_comparison, print_step  # noqa: E402

from relay.handset import CallReport, SimHandset, synthesize  # noqa: E402
from relay.secretbox import new_key  # noqa: E402

BENCH_PROJECT = "bench"  # the project harness.create_key makes the key in
# Warm-up rounds (a call per worker each) before giving up on a worker the kernel never
# handed a call: its first measured call then loads its models.
WARM_ROUNDS = 6

# The callers' lines. Piper pauses 320-440 ms at some commas ("Thank you, that is..."):
# at 400 ms endpointing the relay rightly takes such a pause for the end of the turn, answers
# "Thank you.", and is talked over, which measures a premature turn end, not a reply. No
# line here pauses longer than 300 ms; a step reports turn ends the relay found inside a
# line ("premature turn ends").
LINES = [
    "Hi, I would like to book a table for two people tomorrow evening.",
    "Do you have anything free at around seven o'clock?",
    "Please put it under the name Johnson.",
    "Is there parking close to the restaurant?",
    "Thanks a lot for your help today.",
]


def reply(turn: int) -> list[dict[str, Any]]:
    """Two NDJSON chunks (the first is spoken while the second is on its way), worded anew
    every turn from the first clause on: the relay keeps synthesized phrases
    (``RELAY_TTS_CACHE_MB``), and a reply said before would be measured without its
    synthesis. The greeting is the same for every call, as a real agent's is."""
    return [
        {"text": f"Noted as item {turn}, thank you.", "interim": True},
        {"text": f" Is there anything else you need for item {turn}?"},
    ]


GREETING = "Thanks for calling. How can I help?"
# How the callers wait for the agent (relay.handset.SimHandset).
TIMING: dict[str, Any] = {
    "listen": False,
    "answer_silence_ms": 1000,
    "answer_timeout_s": 10.0,
    "greeting_timeout_s": 10.0,
}
RAMP = [1, 2, 4, 8, 12, 16, 20, 24, 32]
FRAME_MS = 20.0
STALL_MS = 100.0


# --- the instant webhook --------------------------------------------------------------


class InstantWebhook(harness.LocalHook):
    """The developer's server at its fastest: every turn answered at once, streamed."""

    def __init__(self) -> None:
        self.turns = 0
        self.transcripts: list[str] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        event = await request.json()
        self.turns += 1
        self.transcripts.append(event.get("data", {}).get("transcript") or "")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for chunk in reply(self.turns):
            await resp.write(json.dumps(chunk).encode() + b"\n")
        await resp.write_eof()
        return resp


# --- results --------------------------------------------------------------------------


def pacing_gaps(report: CallReport) -> list[tuple[float, str]]:
    """Inter-arrival gaps (ms) of the relay's frames within each answer (frames between one
    end of the caller's speech and the next; the greeting: before the first), each with
    where it was: answer, frames before and after it in that answer."""
    marks = [t.end_of_speech_at for t in report.turns] + [float("inf")]
    gaps: list[tuple[float, str]] = []
    answers: list[list[float]] = [[] for _ in marks]
    window = 0
    for at in report.frames_at:
        while at >= marks[window]:
            window += 1
        answers[window].append(at)
    for index, frames in enumerate(answers):
        for i in range(1, len(frames)):
            where = f"{report.call_id} answer {index} after frame {i} of {len(frames)}"
            gaps.append(((frames[i] - frames[i - 1]) * 1000, where))
    return gaps


# --- one step: N calls at once --------------------------------------------------------


class Bench:
    def __init__(
        self,
        server: harness.Server,
        key: str,
        number: str,
        wavs: list[Path],
        hook: InstantWebhook,
        carrier: CarrierSide | None = None,
    ) -> None:
        self.server = server
        self.key = key
        self.number = number
        self.wavs = wavs
        self.hook = hook
        self.carrier = carrier

    async def _one_call(self, delay: float, turns: int, offset: int) -> CallReport:
        await asyncio.sleep(delay)
        lines: list[str | Path] = [self.wavs[(offset + i) % len(self.wavs)] for i in range(turns)]
        if self.carrier is not None:
            return await self.carrier.call(self.server.base, self.number, lines, TIMING)
        return await SimHandset(self.server.base, self.key, **TIMING).call(self.number, lines)

    async def _metrics(self, http: aiohttp.ClientSession, call_id: str, turns: int) -> list[Any]:
        """The engine's per-turn metrics of a call, once the call has stored them."""
        rows: list[Any] = []
        for _ in range(100):
            async with http.get(f"/v1/calls/{call_id}/metrics") as resp:
                if resp.status == 200:
                    body = await resp.json()
                    rows = [r for r in body.get("perTurn", []) if r.get("kind") == "speech"]
                    if len(rows) >= turns:
                        return rows
            await asyncio.sleep(0.1)
        return rows

    async def _problems(self, http: aiohttp.ClientSession, call_id: str) -> list[Any]:
        """The warnings and errors in a call's event log (a failed synthesis, a webhook
        error...)."""
        found: list[Any] = []
        for level in ("warning", "error"):
            async with http.get(f"/v1/calls/{call_id}/events", params={"level": level}) as resp:
                if resp.status == 200:
                    found += (await resp.json()).get("data", [])
        return found

    async def step(self, calls: int, turns: int, stagger: float) -> Step:
        result = Step(calls=calls, turns_per_call=turns)
        pid = self.server.proc.pid
        cpu0, wall0 = harness._cpu_seconds(pid), time.monotonic()
        own0, machine0 = time.process_time(), harness._machine_cpu_seconds()
        spread = stagger / calls if calls > 1 else 0.0
        webhook_turns = self.hook.turns
        outcomes = await asyncio.gather(
            *(self._one_call(i * spread, turns, i) for i in range(calls)),
            return_exceptions=True,
        )
        result.seconds = round(time.monotonic() - wall0, 1)
        result.relay_cpu_pct = round(100 * (harness._cpu_seconds(pid) - cpu0) / result.seconds, 1)
        result.callers_cpu_pct = round(100 * (time.process_time() - own0) / result.seconds, 1)
        machine1 = harness._machine_cpu_seconds()
        if machine0 is not None and machine1 is not None:
            result.machine_cpu_pct = round(100 * (machine1 - machine0) / result.seconds, 1)
        rss, peak = relay_rss_mib(pid)
        result.relay_rss_mib, result.relay_peak_rss_mib = round(rss, 1), round(peak, 1)

        reports = [r for r in outcomes if isinstance(r, CallReport)]
        for failure in outcomes:
            if isinstance(failure, BaseException):
                result.failed_calls += 1
                result.errors.append(repr(failure)[:200])
        gaps: list[tuple[float, str]] = []
        engine_rows: list[dict[str, Any]] = []
        headers = {"Authorization": f"Bearer {self.key}"}
        async with aiohttp.ClientSession(base_url=self.server.base, headers=headers) as http:
            for report in reports:
                answered = [t.latency_ms for t in report.turns if t.latency_ms is not None]
                result.turns += len(report.turns)
                result.unanswered += len(report.turns) - len(answered)
                result.unanswered += turns - len(report.turns)  # turns never reached
                result.latencies_ms += answered
                gaps += pacing_gaps(report)
                result.frames += len(report.frames_at)
                engine_rows += await self._metrics(http, report.call_id, len(report.turns))
                for event in await self._problems(http, report.call_id):
                    result.call_warnings += 1
                    if len(result.errors) < 5:
                        result.errors.append(f"{report.call_id}: {event['message'][:160]}")
        result.premature_turns = max(0, self.hook.turns - webhook_turns - result.turns)
        lat = result.latencies_ms
        result.v2v_p50_ms, result.v2v_p90_ms = pct(lat, 50), pct(lat, 90)
        result.v2v_p99_ms, result.v2v_max_ms = pct(lat, 99), (max(lat) if lat else None)
        for label, key in STAGES:
            values = [float(r[key]) for r in engine_rows if isinstance(r.get(key), int | float)]
            result.stages_ms[label] = {
                "p50": pct(values, 50),
                "p90": pct(values, 90),
                "p99": pct(values, 99),
            }
        result.overhead_p99_ms = result.stages_ms["relay overhead"]["p99"]
        parts: dict[str, list[float]] = {}
        for row in engine_rows:
            for part, value in (row.get("overhead") or {}).items():
                if isinstance(value, int | float):
                    parts.setdefault(part, []).append(float(value))
        result.overhead_parts_ms = {
            part: {"p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99)}
            for part, v in parts.items()
        }
        jitter = [abs(g - FRAME_MS) for g, _ in gaps]
        if gaps:
            worst, where = max(gaps)
            result.worst_gap = f"{worst:.0f} ms: {where}"
        result.jitter_p99_ms = pct(jitter, 99)
        result.jitter_max_ms = round(max(jitter), 1) if jitter else None
        result.stalls = sum(g >= STALL_MS for g, _ in gaps)
        return result


def relay_rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) RSS of ``relay serve`` and its workers, summed."""
    pids = [pid]
    try:
        import psutil
    except ImportError:  # the one process, as bench/api.py reads it
        psutil = None
    if psutil is not None:
        with contextlib.suppress(psutil.Error):
            pids += [p.pid for p in psutil.Process(pid).children(recursive=True)]
    rss = peak = 0.0
    for each in pids:
        try:
            now, most = harness._rss_mib(each)
        except OSError:  # a worker gone between the listing and the read
            continue
        rss, peak = rss + now, peak + most
    return rss, peak


async def nodes_running_calls(server: harness.Server, key: str, seen: set[str]) -> set[str]:
    """Every node of the relay; adds to ``seen`` those that run a call, until cancelled."""
    headers = {"Authorization": f"Bearer {key}"}
    every: set[str] = set()
    async with aiohttp.ClientSession(base_url=server.base, headers=headers) as http:
        while True:
            async with http.get("/v1/nodes") as resp:
                if resp.status != 200:
                    raise RuntimeError(f"GET /v1/nodes: {resp.status} {await resp.text()}")
                for node in (await resp.json())["data"]:
                    every.add(node["id"])
                    if node["liveCalls"] > 0:
                        seen.add(node["id"])
            await asyncio.sleep(0.1)
            if seen and seen >= every:
                return every


async def warm_up(bench: Bench, key: str, workers: int) -> str:
    """The first call of each worker loads and warms its models: not counted. Returns what
    was done, for the report."""
    if workers == 1:
        await bench.step(1, 1, 0.0)
        return "warm-up call done"
    seen: set[str] = set()
    for round_ in range(1, WARM_ROUNDS + 1):
        watch = asyncio.create_task(nodes_running_calls(bench.server, key, seen))
        await bench.step(workers, 1, 0.0)
        done = watch.done()
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        if done:
            return f"warm-up: every one of {workers} workers ran a call ({round_} rounds)"
    return f"warm-up: only {len(seen)} of {workers} workers got a call in {WARM_ROUNDS} rounds"


# --- setup ----------------------------------------------------------------------------


def caller_wavs(directory: Path) -> list[Path]:
    """The callers' lines, spoken once with Piper at 8 kHz, as WAV files."""
    paths = []
    for i, text in enumerate(LINES):
        pcm = synthesize(text)
        path = directory / f"line{i}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(pcm.tobytes())
        paths.append(path)
    return paths


@contextmanager
def database(url: str | None) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, schema): a fresh SQLite file, or a fresh schema on PostgreSQL."""
    if not url or url.startswith("sqlite"):
        if url:
            yield url, ""
            return
        with harness._sqlite_database() as made:
            yield made
        return
    with harness._postgres_database(
        url.replace("postgresql+asyncpg://", "postgresql://", 1)
    ) as made:
        yield made


async def provision(
    server: harness.Server, key: str, webhook_url: str, carrier: CarrierSide | None
) -> str:
    """An agent on the instant webhook, bound to a sim number (or a number imported under a
    project's account at the carrier); returns the number."""
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(base_url=server.base, headers=headers) as http:
        await server.wait_ready(http)
        body = {"name": "bench agent", "webhookUrl": webhook_url, "greeting": GREETING}
        if carrier is None:
            return await harness.agent_with_number(http, body)
        async with http.post("/v1/agents", json=body) as resp:
            agent_id = (await resp.json())["id"]
        return await carrier.number(http, agent_id)


def relay_env(
    url: str, schema: str, port: int, args: argparse.Namespace, workers: int = 1
) -> dict[str, str]:
    env = harness._relay_env(url, schema, port, workers)
    env.update(
        # The bench's key may list the nodes, so the warm-up sees which worker ran a call.
        RELAY_ADMIN_PROJECTS=BENCH_PROJECT,
        RELAY_ALLOW_PRIVATE_WEBHOOKS="true",
        RELAY_SIM_ENABLED="true",
        RELAY_ENDPOINTING_DELAY_MS=str(args.endpointing_ms),
        RELAY_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    # The sibling benches (web_voice.py, quality.py) reach no carrier: they have no side.
    carrier: CarrierSide | None = getattr(args, "carrier_side", None)
    if carrier is not None:
        env.update(RELAY_ENCRYPTION_KEY=new_key(), **carrier.env())
    return env


async def run(
    server: harness.Server, key: str, args: argparse.Namespace, workers: int = 1
) -> dict[str, Any]:
    hook = InstantWebhook()
    await hook.start()
    carrier: CarrierSide | None = args.carrier_side
    if carrier is not None:
        await carrier.start()
    try:
        number = await provision(server, key, hook.url, carrier)
        with tempfile.TemporaryDirectory(prefix="relay-voice-") as tmp:
            wavs = await asyncio.get_running_loop().run_in_executor(None, caller_wavs, Path(tmp))
            # The callers' process holds Piper and the relay's modules too: keep its full
            # garbage collections short, or they show up as the relay's jitter.
            gc.freeze()
            bench = Bench(server, key, number, wavs, hook, carrier)
            print(f"  ({await warm_up(bench, key, workers)})", flush=True)
            main = await bench.step(args.calls, args.turns, args.stagger)
            print_step("load", main, detail=True)
            ramp: list[Step] = []
            capacity = None
            if args.ramp:
                print(f"\n  capacity ramp ({args.turns} turns per call):", flush=True)
                base: Step | None = None
                for calls in [n for n in RAMP if n <= args.ramp_max]:
                    step = main if calls == args.calls else None
                    if step is None:
                        step = await bench.step(calls, args.turns, args.stagger)
                    ramp.append(step)
                    base = base or step
                    ok = passes(step, base, args.capacity_factor)
                    print_step(f"{calls:>2} calls", step, verdict="pass" if ok else "FAIL")
                    if not ok:
                        break
                    capacity = calls
            transcripts = hook.transcripts[-3:]
    finally:
        await hook.stop()
        if carrier is not None:
            await carrier.stop()
    return {
        "benchmark": "voice",
        "workers": workers,
        "carrier": args.carrier,
        "endpointing_ms": args.endpointing_ms,
        "webhook_turns": hook.turns,
        "sample_transcripts": transcripts,
        "load": asdict(main),
        "ramp": [asdict(s) for s in ramp],
        "capacity_calls": capacity,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4, help="simultaneous calls (4)")
    parser.add_argument("--turns", type=int, default=4, help="caller turns per call (4)")
    parser.add_argument(
        "--ramp", action=argparse.BooleanOptionalAction, default=True, help="capacity ramp"
    )
    parser.add_argument("--ramp-max", type=int, default=24, help="largest ramp step (24)")
    parser.add_argument("--capacity-factor", type=float, default=1.5)
    parser.add_argument(
        "--stagger", type=float, default=3.0, help="seconds over which a step's calls start"
    )
    parser.add_argument("--endpointing-ms", type=int, default=400)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("RELAY_BENCH_DATABASE_URL"),
        help="default: a fresh SQLite file; postgresql://...: a fresh schema there",
    )
    parser.add_argument("--relay-log", type=Path, help="keep the relay's log in this file")
    parser.add_argument("--quick", action="store_true", help="1 call, 1 turn, no ramp")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="relay serve --workers, each in turn (e.g. 1 2: one then two, same run; "
        "above 1 on PostgreSQL only)",
    )
    parser.add_argument(
        "--carrier",
        choices=["sim", "plivo", "telnyx"],
        default="sim",
        help="sim (Twilio Media Streams), plivo or telnyx (a fake of that carrier, its media "
        "protocol)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.calls, args.turns, args.ramp = 1, 1, False
    if args.calls < 1 or args.turns < 1 or args.stagger < 0:
        print("error: --calls and --turns must be >= 1, --stagger >= 0", file=sys.stderr)
        return 2
    if max(args.workers) > 1:
        if args.database_url and args.database_url.startswith("sqlite"):
            print("error: --workers above 1 needs PostgreSQL (--database-url)", file=sys.stderr)
            return 2
        args.database_url = args.database_url or harness.DEFAULT_PG_DSN
    if min(args.workers) < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    args.carrier_side = carrier_side(args.carrier, harness._free_port(), TIMING)
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    print("relay voice benchmark")
    print(
        f"  {platform.python_implementation()} {platform.python_version()}, {platform.system()} "
        f"{platform.release()}, {cores} CPU cores; load average at start {load:.1f}"
    )
    path = {
        "plivo": "Plivo calls over its audio stream",
        "telnyx": "Telnyx calls over its media streaming",
    }.get(args.carrier, "sim calls over Twilio Media Streams")
    print(
        f"  {path}, "
        "Piper caller speech, instant NDJSON webhook; "
        f"endpointing {args.endpointing_ms} ms; calls start over {args.stagger:g} s"
    )
    print(
        f"  CPU% is of one core (machine max {100 * cores}%); the callers run in this process "
        "on the same cores, and so does anything else running here.",
        flush=True,
    )
    summaries = [run_workers(args, workers) for workers in args.workers]
    for summary in summaries:
        if summary["capacity_calls"] is not None:
            print(
                f"\n  capacity, {summary['workers']} worker(s): "
                f"{summary['capacity_calls']} simultaneous calls"
            )
        for step in [summary["load"], *summary["ramp"]]:
            step.pop("latencies_ms", None)
    if len(summaries) > 1:
        print_comparison(summaries)
        print(json.dumps({"benchmark": "voice", "runs": summaries}, separators=(",", ":")))
    else:
        print(json.dumps(summaries[0], separators=(",", ":")))
    loads = [summary["load"] for summary in summaries]
    return 1 if any(load["unanswered"] or load["failed_calls"] for load in loads) else 0


def run_workers(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    """The benchmark against ``relay serve --workers workers`` on a fresh database."""
    with database(args.database_url) as (url, schema):
        with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
            workdir = Path(tmp)
            port = harness._free_port()
            env = relay_env(url, schema, port, args, workers)
            key = harness.create_key(env, workdir, project=BENCH_PROJECT)
            where = url + (f" (schema {schema})" if schema else "")
            print(f"\n[{workers} worker(s)] database {where}", flush=True)
            server = harness.Server(env, port, workdir)
            try:
                summary = asyncio.run(run(server, key, args, workers))
                summary["load_average_end"] = round(os.getloadavg()[0], 2)
                return summary
            except BaseException:
                print(server.log_tail(), file=sys.stderr)
                raise
            finally:
                server.stop()
                if args.relay_log:
                    log = args.relay_log
                    if len(args.workers) > 1:
                        log = log.with_name(f"{log.stem}.{workers}w{log.suffix}")
                    shutil.copyfile(server.log_path, log)


if __name__ == "__main__":
    sys.exit(main())
