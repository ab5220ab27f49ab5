"""Lifecycle webhook benchmark: events delivered per second, and the delay from a call's
state change to its webhook arriving, against a real ``relay serve`` subprocess.

For each backend (a fresh SQLite file, and/or a fresh schema on the local PostgreSQL) this
starts the relay, registers a webhook endpoint pointing at a receiver in this process, and
drives calls through the API: ``POST /v1/calls`` (a BYOT call: ``call.queued`` and
``call.connecting``, one transaction) then ``POST /v1/calls/{id}/end`` (``call.failed``).

* ``paced``: open loop at ``--rate`` events per second (the target: p99 <= 50 ms at 200/s);
* ``max``: ``--concurrency`` workers create and end calls back to back, as fast as the
  relay takes them.

The delay of an event is its arrival at the receiver minus its ``timestamp`` (set when the
state change was written, just before the commit): both clocks are this machine's. Events
of the first ``--warmup`` seconds are not counted. It prints a report, then one JSON line.

    .venv/bin/python bench/webhooks.py                 # both backends
    .venv/bin/python bench/webhooks.py --quick --backend sqlite
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
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api as harness  # noqa: E402  (bench/api.py: the relay subprocess and databases)

AGENT_BODY = {"name": "bench agent", "webhookUrl": "https://example.com/relay-webhook"}
EVENTS_PER_CALL = 3


@dataclass
class Result:
    backend: str
    scenario: str
    seconds: float
    target_rate: float | None
    workers: int = 1  # relay serve --workers
    events_expected: int = 0
    events_delivered: int = 0
    duplicates: int = 0
    missing: int = 0
    delivered_per_second: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    api_errors: dict[str, int] = field(default_factory=dict)
    skipped_calls: int = 0
    server_cpu_pct: float = 0.0
    server_cpu_ms_per_call: float = 0.0
    notes: list[str] = field(default_factory=list)


class Receiver(harness.LocalHook):
    """Answers 204 at once; remembers when each event first arrived."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[float, float]] = {}  # event id -> (arrived, state change)
        self.duplicates = 0

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.time()
        event = json.loads(await request.read())
        if event["id"] in self.first:
            self.duplicates += 1
        else:
            changed = datetime.fromisoformat(event["timestamp"]).timestamp()
            self.first[event["id"]] = (arrived, changed)
        return web.Response(status=204)


class Driver:
    """Makes state changes through the API: a call, then its end."""

    def __init__(self, session: aiohttp.ClientSession, agent_id: str) -> None:
        self.session = session
        self.body = {"agentId": agent_id, "connectionType": "websocket"}
        self.calls = 0
        self.in_flight = 0
        self.errors: Counter[str] = Counter()

    async def call_and_end(self) -> None:
        self.in_flight += 1
        try:
            async with self.session.post("/v1/calls", json=self.body) as resp:
                if resp.status != 201:
                    self.errors[f"create {resp.status}"] += 1
                    return
                call_id = (await resp.json())["id"]
            self.calls += 1
            async with self.session.post(f"/v1/calls/{call_id}/end") as resp:
                await resp.read()
                if resp.status != 200:
                    self.errors[f"end {resp.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1
        finally:
            self.in_flight -= 1


def _delays(receiver: Receiver, since: float, until: float) -> list[float]:
    return sorted(
        (arrived - changed) * 1000
        for arrived, changed in receiver.first.values()
        if since <= changed < until
    )


async def _settle(receiver: Receiver, expected: int, within: float = 15.0) -> None:
    for _ in range(int(within / 0.05)):
        if len(receiver.first) >= expected:
            return
        await asyncio.sleep(0.05)


def _fill(
    result: Result, receiver: Receiver, since: float, until: float, cpu_seconds: float
) -> None:
    delays = _delays(receiver, since, until)
    result.events_delivered = len(delays)
    result.delivered_per_second = len(delays) / result.seconds
    result.p50_ms = harness._percentile(delays, 50)
    result.p90_ms = harness._percentile(delays, 90)
    result.p99_ms = harness._percentile(delays, 99)
    result.max_ms = delays[-1] if delays else 0.0
    result.server_cpu_pct = 100 * cpu_seconds / result.seconds
    calls = len(delays) / EVENTS_PER_CALL
    result.server_cpu_ms_per_call = 1000 * cpu_seconds / calls if calls else 0.0


async def paced(
    backend: str, driver: Driver, receiver: Receiver, pid: int, args: argparse.Namespace
) -> Result:
    """Open loop: a new call (3 events) every 3/rate seconds, whatever the relay does."""
    result = Result(backend, "paced", args.seconds, args.rate)
    interval = EVENTS_PER_CALL / args.rate
    tasks: set[asyncio.Task[None]] = set()
    start = time.time()
    since, until = start + args.warmup, start + args.warmup + args.seconds
    before = len(receiver.first)
    calls_before = driver.calls
    cpu = 0.0
    n = 0
    while True:
        due = start + n * interval
        now = time.time()
        if due >= until:
            break
        if due > now:
            await asyncio.sleep(due - now)
        if cpu == 0.0 and time.time() >= since:
            cpu = harness._cpu_seconds(pid)
        n += 1
        if driver.in_flight >= args.max_in_flight:
            # The relay is not keeping up: do not pile up requests until they time out.
            result.skipped_calls += since <= due < until
            continue
        task = asyncio.create_task(driver.call_and_end())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    cpu = harness._cpu_seconds(pid) - cpu
    await asyncio.gather(*tasks)
    expected = before + (driver.calls - calls_before) * EVENTS_PER_CALL
    await _settle(receiver, expected)
    _fill(result, receiver, since, until, cpu)
    window_calls = sum(1 for i in range(n) if since <= start + i * interval < until)
    result.events_expected = window_calls * EVENTS_PER_CALL
    result.missing = max(0, expected - len(receiver.first))
    result.api_errors = dict(driver.errors)
    return result


async def saturated(
    backend: str, driver: Driver, receiver: Receiver, pid: int, args: argparse.Namespace
) -> Result:
    result = Result(backend, "max", args.seconds, None)
    start = time.time()
    since, until = start + args.warmup, start + args.warmup + args.seconds
    before = len(receiver.first)
    calls_before = driver.calls

    async def worker() -> None:
        while time.time() < until:
            await driver.call_and_end()

    workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    await asyncio.sleep(max(0.0, since - time.time()))
    cpu = harness._cpu_seconds(pid)
    await asyncio.gather(*workers)
    cpu = harness._cpu_seconds(pid) - cpu
    expected = before + (driver.calls - calls_before) * EVENTS_PER_CALL
    await _settle(receiver, expected)
    _fill(result, receiver, since, until, cpu)
    result.events_expected = result.events_delivered  # closed loop: whatever was made
    result.missing = max(0, expected - len(receiver.first))
    result.api_errors = dict(driver.errors)
    return result


async def _bench_backend(
    backend: str, server: harness.Server, key: str, args: argparse.Namespace
) -> list[Result]:
    receiver = Receiver()
    await receiver.start()
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=256)
    try:
        async with aiohttp.ClientSession(
            base_url=server.base,
            headers=headers,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=30),
        ) as session:
            await server.wait_ready(session)
            async with session.post("/v1/webhook-endpoints", json={"url": receiver.url}) as resp:
                assert resp.status == 201, await resp.text()
            async with session.post("/v1/agents", json=AGENT_BODY) as resp:
                assert resp.status == 201, await resp.text()
                agent_id = (await resp.json())["id"]
            driver = Driver(session, agent_id)
            results = []
            for scenario in (paced, saturated):
                driver.errors.clear()
                result = await scenario(backend, driver, receiver, server.proc.pid, args)
                result.duplicates = receiver.duplicates
                _print(result)
                results.append(result)
            return results
    finally:
        await receiver.stop()


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
        f"  {r.scenario:<6} ({rate}): {r.events_delivered} events in {r.seconds:g} s = "
        f"{r.delivered_per_second:.1f} delivered/s; state change -> delivery ms "
        f"p50 {r.p50_ms:.1f}  p90 {r.p90_ms:.1f}  p99 {r.p99_ms:.1f}  max {r.max_ms:.1f}; "
        f"missing {r.missing}, duplicates {r.duplicates}, "
        f"API errors {sum(r.api_errors.values())}"
        + (f" {r.api_errors}" if r.api_errors else "")
        + (f", calls skipped (relay behind) {r.skipped_calls}" if r.skipped_calls else "")
        + f", server CPU {r.server_cpu_pct:.0f}% = {r.server_cpu_ms_per_call:.2f} ms per call",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="relay serve --workers, each in turn (e.g. 1 2: one then two, same run; SQLite: 1)",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="paced events per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured per scenario")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16, help="workers in 'max'")
    parser.add_argument(
        "--max-in-flight", type=int, default=64, help="paced: calls allowed in flight at once"
    )
    parser.add_argument(
        "--pg-dsn", default=os.environ.get("RELAY_BENCH_PG_DSN", harness.DEFAULT_PG_DSN)
    )
    parser.add_argument("--quick", action="store_true", help="5 s per scenario, 1 s warm-up")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup = 5.0, 1.0
    cores = os.cpu_count() or 1
    print("relay lifecycle webhook benchmark")
    print(
        f"  {platform.python_implementation()} {platform.python_version()}, aiohttp "
        f"{aiohttp.__version__}, {platform.system()} {platform.release()}, {cores} CPU cores"
    )
    print(
        f"  per call: POST /v1/calls (call.queued + call.connecting) then POST .../end "
        f"(call.failed); {args.seconds:g} s measured after {args.warmup:g} s warm-up"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"  NOTE: this process (load + receiver) shares the {cores} cores with the relay "
        f"and PostgreSQL; load average at start {load:.1f}, niceness {os.nice(0)}."
    )
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results: list[Result] = []
    for backend in backends:
        for workers in args.workers if backend == "postgresql" else [1]:
            results += run_backend(backend, args, workers)
    print(json.dumps({"benchmark": "webhooks", "results": [asdict(r) for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
