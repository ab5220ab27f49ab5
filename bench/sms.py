"""SMS benchmark: inbound text -> agent webhook -> reply handed to the carrier, against a
real ``relay serve`` subprocess.

For each backend (a fresh SQLite file, and/or a fresh schema on the local PostgreSQL) this
starts the relay, makes an agent whose webhook is a server in this process, and a sim number
for it. Each message is ``POST /carriers/sim/sms`` with ``waitSeconds``: the relay stores the
text, its conversation worker POSTs a signed ``agent.message`` to the webhook, the webhook
answers JSON (after ``--webhook-ms``), and the relay hands the reply to the sim carrier, at
which point the request returns. Per message:

    relay     the relay's own time for the request, from its ``Server-Timing`` header
              (request handed to the app -> response ready: the reply is with the carrier)
    webhook   the time spent inside the webhook's handler (measured by the webhook)
    overhead  relay - webhook: everything the relay added, the HTTP hop to the webhook
              and back included. This is the figure the target is about.
    wire      round trip as this process sees it - webhook: ``overhead`` plus the carrier's
              HTTP hop to the relay and this (shared-CPU) process's own event-loop delays

Scenarios:
* ``paced``: open loop at ``--rate`` messages/s, spread over ``--conversations`` handsets (the
  target: >= 300 messages/s with p99 overhead <= 25 ms on SQLite). A relay that cannot keep
  up builds a queue, and its overhead percentiles grow without bound;
* ``max``: ``--concurrency`` conversations each texting again as soon as the reply is back.

Messages of the first ``--warmup`` seconds are not counted. It prints a report, then one
line of JSON with the same numbers; it exits 1 if any message failed or none was counted.

    .venv/bin/python bench/sms.py                  # both backends
    .venv/bin/python bench/sms.py --quick --backend sqlite
"""

from __future__ import annotations

import argparse
import asyncio
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
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api as harness  # noqa: E402  (bench/api.py: the relay subprocess and databases)

REPLY = {"text": "Thanks! We have your message and will get back to you shortly."}
# ACMA's fiction range: 1,000 valid mobile numbers that can never reach a real phone.
HANDSETS = [f"+61491570{n:03d}" for n in range(1000)]


TARGET_RATE = 300.0
TARGET_P99_MS = 25.0


@dataclass
class Result:
    backend: str
    scenario: str
    seconds: float
    target_rate: float | None
    workers: int = 1  # relay serve --workers
    sent: int = 0
    messages: int = 0
    messages_per_second: float = 0.0
    overhead_p50_ms: float = 0.0
    overhead_p90_ms: float = 0.0
    overhead_p99_ms: float = 0.0
    overhead_max_ms: float = 0.0
    wire_overhead_p50_ms: float = 0.0
    wire_overhead_p99_ms: float = 0.0
    relay_p50_ms: float = 0.0
    relay_p99_ms: float = 0.0
    total_p50_ms: float = 0.0
    total_p99_ms: float = 0.0
    webhook_p50_ms: float = 0.0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    server_cpu_pct: float = 0.0
    server_cpu_ms_per_message: float = 0.0


class Webhook(harness.LocalHook):
    """The developer's webhook: answers at once (or after ``delay``), timing its handler."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.spent: dict[str, float] = {}  # messageId -> seconds inside the handler

    async def _handle(self, request: web.Request) -> web.Response:
        began = time.perf_counter()
        event = json.loads(await request.read())
        if self.delay:
            await asyncio.sleep(self.delay)
        response = web.json_response(REPLY)
        self.spent[event["data"]["messageId"]] = time.perf_counter() - began
        return response


@dataclass
class Sample:
    started: float
    total: float
    relay: float
    message_id: str


def server_timing(header: str) -> float | None:
    """Seconds from ``Server-Timing: relay;dur=<ms>``; None if the header has no such entry."""
    for entry in header.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        if name != "relay":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "dur":
                try:
                    return float(value) / 1000
                except ValueError:
                    return None
    return None


class Texter:
    """Texts the relay's sim number and waits for the reply to reach the carrier."""

    def __init__(self, session: aiohttp.ClientSession, number: str) -> None:
        self.session = session
        self.number = number
        self.samples: list[Sample] = []
        self.errors: list[tuple[float, str]] = []  # (started, kind)
        self.sent: list[float] = []

    def reset(self) -> None:
        self.samples.clear()
        self.errors.clear()
        self.sent.clear()

    async def text(self, handset: str) -> None:
        body = {"to": self.number, "from": handset, "text": "Hi, is my order ready?"}
        body["waitSeconds"] = 20
        began = time.perf_counter()
        self.sent.append(began)
        kind = None
        try:
            async with self.session.post("/carriers/sim/sms", json=body) as resp:
                answer = await resp.json()
                relay = server_timing(resp.headers.get("Server-Timing", ""))
                if resp.status != 200:
                    kind = f"HTTP {resp.status}"
                elif answer["timedOut"] or len(answer["replies"]) != 1:
                    kind = "no reply"
                elif answer["replies"][0]["text"] != REPLY["text"]:
                    kind = "wrong reply"
                elif relay is None:
                    kind = "no Server-Timing"
        except (aiohttp.ClientError, TimeoutError) as exc:
            kind = type(exc).__name__
        if kind is not None:
            self.errors.append((began, kind))
            return
        assert relay is not None
        self.samples.append(Sample(began, time.perf_counter() - began, relay, answer["messageId"]))


def _fill(
    result: Result,
    texter: Texter,
    webhook: Webhook,
    since: float,
    until: float,
    cpu_seconds: float,
) -> None:
    """Counted: messages sent inside [since, until) and answered. (An open loop that outruns
    the relay builds a queue, which shows in the overhead percentiles.)"""
    window = [s for s in texter.samples if since <= s.started < until]
    errors: dict[str, int] = {}
    for started, kind in texter.errors:
        if since <= started < until:
            errors[kind] = errors.get(kind, 0) + 1
    unseen = [s for s in window if s.message_id not in webhook.spent]
    if unseen:  # a reply the webhook never made: not a measurement of this path
        errors["webhook not called"] = len(unseen)
        window = [s for s in window if s.message_id in webhook.spent]
    spent = [webhook.spent[s.message_id] * 1000 for s in window]
    overheads = sorted(s.relay * 1000 - w for s, w in zip(window, spent, strict=True))
    wire = sorted(s.total * 1000 - w for s, w in zip(window, spent, strict=True))
    pct = harness._percentile
    result.sent = sum(1 for t in texter.sent if since <= t < until)
    result.messages = len(window)
    result.messages_per_second = len(window) / result.seconds
    result.overhead_p50_ms = pct(overheads, 50)
    result.overhead_p90_ms = pct(overheads, 90)
    result.overhead_p99_ms = pct(overheads, 99)
    result.overhead_max_ms = overheads[-1] if overheads else 0.0
    result.wire_overhead_p50_ms = pct(wire, 50)
    result.wire_overhead_p99_ms = pct(wire, 99)
    relay = sorted(s.relay * 1000 for s in window)
    result.relay_p50_ms = pct(relay, 50)
    result.relay_p99_ms = pct(relay, 99)
    totals = sorted(s.total * 1000 for s in window)
    result.total_p50_ms = pct(totals, 50)
    result.total_p99_ms = pct(totals, 99)
    result.webhook_p50_ms = pct(sorted(spent), 50)
    result.errors = sum(errors.values())
    result.error_kinds = errors
    result.server_cpu_pct = 100 * cpu_seconds / result.seconds
    result.server_cpu_ms_per_message = 1000 * cpu_seconds / len(window) if window else 0.0


async def paced(
    backend: str, texter: Texter, webhook: Webhook, pid: int, args: argparse.Namespace
) -> Result:
    """Open loop: one text every 1/rate seconds, whatever the relay does, round-robin over
    the conversations (so one conversation gets a text every conversations/rate seconds)."""
    result = Result(backend, "paced", args.seconds, args.rate)
    texter.reset()
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    since, until = start + args.warmup, start + args.warmup + args.seconds
    cpu_0 = cpu_1 = None
    n = 0
    while True:
        due = start + n / args.rate
        now = time.perf_counter()
        if due >= until:
            break
        if due > now:
            await asyncio.sleep(due - now)
        if cpu_0 is None and time.perf_counter() >= since:
            cpu_0 = harness._cpu_seconds(pid)
        task = asyncio.create_task(texter.text(HANDSETS[n % args.conversations]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    cpu_1 = harness._cpu_seconds(pid)
    await asyncio.gather(*tasks)
    _fill(result, texter, webhook, since, until, cpu_1 - (cpu_0 or cpu_1))
    return result


async def saturated(
    backend: str, texter: Texter, webhook: Webhook, pid: int, args: argparse.Namespace
) -> Result:
    """Closed loop: each conversation texts again as soon as its reply is back."""
    result = Result(backend, "max", args.seconds, None)
    texter.reset()
    start = time.perf_counter()
    since, until = start + args.warmup, start + args.warmup + args.seconds

    async def conversation(handset: str) -> None:
        while time.perf_counter() < until:
            await texter.text(handset)

    workers = [asyncio.create_task(conversation(HANDSETS[-1 - i])) for i in range(args.concurrency)]
    await asyncio.sleep(max(0.0, since - time.perf_counter()))
    cpu_0 = harness._cpu_seconds(pid)
    await asyncio.sleep(max(0.0, until - time.perf_counter()))
    cpu_1 = harness._cpu_seconds(pid)
    await asyncio.gather(*workers)
    _fill(result, texter, webhook, since, until, cpu_1 - cpu_0)
    return result


async def _bench_backend(
    backend: str, server: harness.Server, key: str, args: argparse.Namespace
) -> list[Result]:
    webhook = Webhook(args.webhook_ms / 1000)
    await webhook.start()
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(
            base_url=server.base,
            headers={"Authorization": f"Bearer {key}"},
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=60),
        ) as session:
            await server.wait_ready(session)
            agent: dict[str, Any] = {"name": "bench agent", "webhookUrl": webhook.url}
            async with session.post("/v1/agents", json=agent) as resp:
                assert resp.status == 201, await resp.text()
                agent_id = (await resp.json())["id"]
            async with session.post("/v1/numbers", json={"agentId": agent_id}) as resp:
                assert resp.status == 201, await resp.text()
                number = (await resp.json())["phoneNumber"]
            texter = Texter(session, number)
            results = []
            # The closed loop first: it never leaves a backlog; an overloaded paced run does.
            chosen = {"max": [saturated], "paced": [paced], "both": [saturated, paced]}
            for scenario in chosen[args.scenario]:
                result = await scenario(backend, texter, webhook, server.proc.pid, args)
                _print(result)
                results.append(result)
            return results
    finally:
        await webhook.stop()


def run_backend(backend: str, args: argparse.Namespace, workers: int = 1) -> list[Result]:
    database = (
        harness._sqlite_database()
        if backend == "sqlite"
        else harness._postgres_database(args.pg_dsn)
    )
    with database as (url, schema), tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workdir = Path(tmp)
        port = harness._free_port()
        env = harness._relay_env(url, schema, port, workers)
        env["RELAY_ALLOW_PRIVATE_WEBHOOKS"] = "true"
        key = harness.create_key(env, workdir)
        where = url + (f" (schema {schema})" if schema else "")
        print(f"\n[{backend}, {workers} worker(s)] {where}", flush=True)
        server = harness.Server(env, port, workdir)
        try:
            results = asyncio.run(_bench_backend(backend, server, key, args))
            for result in results:
                result.workers = workers
            return results
        except BaseException:
            print(server.log_tail(), file=sys.stderr)
            raise
        finally:
            server.stop()


def _print(r: Result) -> None:
    rate = f"target {r.target_rate:g}/s" if r.target_rate else "closed loop"
    print(
        f"  {r.scenario:<6} ({rate}): {r.messages} of {r.sent} messages answered in "
        f"{r.seconds:g} s = {r.messages_per_second:.1f} messages/s; errors {r.errors} "
        f"{r.error_kinds or ''}\n"
        f"         relay overhead ms p50 {r.overhead_p50_ms:.1f}  p90 {r.overhead_p90_ms:.1f}  "
        f"p99 {r.overhead_p99_ms:.1f}  max {r.overhead_max_ms:.1f}   (wire: p50 "
        f"{r.wire_overhead_p50_ms:.1f}  p99 {r.wire_overhead_p99_ms:.1f})\n"
        f"         relay time p50 {r.relay_p50_ms:.1f} p99 {r.relay_p99_ms:.1f}; round trip p50 "
        f"{r.total_p50_ms:.1f} p99 {r.total_p99_ms:.1f}; webhook p50 {r.webhook_p50_ms:.2f}; "
        f"server CPU {r.server_cpu_pct:.0f}% ({r.server_cpu_ms_per_message:.2f} ms/message)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="relay serve --workers, each in turn (e.g. 1 2: one then two, same run; SQLite: 1)",
    )
    parser.add_argument("--rate", type=float, default=300.0, help="paced messages per second")
    parser.add_argument(
        "--conversations", type=int, default=200, help="handsets the paced texts rotate over"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="conversations in 'max'")
    parser.add_argument("--webhook-ms", type=float, default=0.0, help="webhook think time")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured per scenario")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--pg-dsn", default=os.environ.get("RELAY_BENCH_PG_DSN", harness.DEFAULT_PG_DSN)
    )
    parser.add_argument("--scenario", choices=["max", "paced", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="3 s per scenario, 1 s warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = 3.0, 1.0
    if not 1 <= args.conversations <= len(HANDSETS) or not 1 <= args.concurrency <= 500:
        print(f"error: --conversations 1..{len(HANDSETS)}, --concurrency 1..500", file=sys.stderr)
        return 2
    if args.rate <= 0 or args.seconds <= 0 or args.warmup < 0 or args.webhook_ms < 0:
        print("error: --rate, --seconds > 0; --warmup, --webhook-ms >= 0", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    print("relay SMS benchmark")
    print(
        f"  {platform.python_implementation()} {platform.python_version()}, aiohttp "
        f"{aiohttp.__version__}, {platform.system()} {platform.release()}, {cores} CPU cores"
    )
    print(
        "  per message: POST /carriers/sim/sms (waitSeconds) -> stored -> agent.message to a "
        f"webhook here ({args.webhook_ms:g} ms think time) -> reply handed to the sim carrier; "
        f"{args.seconds:g} s measured after {args.warmup:g} s warm-up"
    )
    print(
        f"  NOTE: this process (load + webhook) shares the {cores} cores with the relay "
        "and PostgreSQL. 'relay overhead' = the relay's Server-Timing - the webhook's own "
        "time; 'wire' adds the carrier's HTTP hop and this process's own delays."
    )
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results: list[Result] = []
    for backend in backends:
        for workers in args.workers if backend == "postgresql" else [1]:
            results += run_backend(backend, args, workers)
    for r in results:
        if r.backend == "sqlite" and r.scenario == "paced" and (r.target_rate or 0) >= TARGET_RATE:
            met = r.messages_per_second >= TARGET_RATE and r.overhead_p99_ms <= TARGET_P99_MS
            print(
                f"  target on SQLite (>= {TARGET_RATE:g} messages/s, p99 overhead <= "
                f"{TARGET_P99_MS:g} ms): {'met' if met else 'NOT met'} "
                f"({r.messages_per_second:.1f}/s, p99 {r.overhead_p99_ms:.1f} ms)"
            )
    rows = [asdict(r) for r in results]
    for row in rows:
        for name, value in row.items():
            if isinstance(value, float):
                row[name] = round(value, 2)
    print(json.dumps({"benchmark": "sms", "results": rows}, separators=(",", ":")))
    return 1 if any(r.messages == 0 or r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
