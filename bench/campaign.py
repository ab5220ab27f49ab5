"""Campaign benchmark: a batch of 500 recipients through the dialling queue of a real
``relay serve`` on the sim carrier, under a concurrency cap.

For each backend (a fresh SQLite file, and/or a fresh schema on the local PostgreSQL) this
starts the relay with ``maxConcurrentCalls`` = ``--cap``, makes an agent and a sim number,
and posts one batch of ``--recipients`` numbers. The sim's callees ring unanswered for
``--ring-ms`` (the sim carrier has no callee that answers without a handset, so the short
calls are short rings ending ``no_answer``); each call still takes the whole queue path:
claim, call created, ``connecting``, carrier dial, ``ringing``, end, outcome settled. It
prints:

    create         wall time of ``POST /v1/calls/batch`` (target <= 1 s for 500)
    cpu/call       the relay process's CPU (user + system) from the POST until the batch
                   completed, per dialled call (target <= 5 ms); ``idle-adjusted`` takes
                   off what the idle relay burns in as long (measured just before)
    dial rate      calls started per second while the queue was full (first to last call
                   created), and the most calls live at once (must be <= the cap)

then one line of JSON with the same numbers.

    .venv/bin/python bench/campaign.py                  # both backends
    .venv/bin/python bench/campaign.py --backend sqlite --recipients 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api as harness  # noqa: E402  (bench/api.py: the relay subprocess and databases)

AREA_CODES = ("415", "212", "312", "206", "617", "512", "303", "202")
TARGET_CREATE_S = 1.0
TARGET_CPU_MS = 5.0
IDLE_SECONDS = 3.0


def recipients(count: int) -> list[dict[str, Any]]:
    """Sim numbers that ring unanswered (not the busy/refused test callees 0188/0189)."""
    numbers = [
        f"+1{code}5550{n:03d}"
        for code in AREA_CODES
        for n in range(100, 200)
        if n not in (188, 189)
    ]
    if count > len(numbers):
        raise SystemExit(f"at most {len(numbers)} recipients")
    return [{"to": n, "variables": {"name": f"R{i}"}} for i, n in enumerate(numbers[:count])]


@dataclass
class Result:
    backend: str
    recipients: int
    cap: int
    ring_ms: float
    create_s: float = 0.0
    batch_s: float = 0.0
    calls: int = 0
    cpu_ms_per_call: float = 0.0
    cpu_ms_per_call_idle_adjusted: float = 0.0
    idle_cpu_pct: float = 0.0
    dial_rate_per_s: float = 0.0
    peak_live: int = 0


async def _json(resp: aiohttp.ClientResponse, status: int) -> Any:
    body = await resp.json()
    if resp.status != status:
        raise RuntimeError(f"{resp.method} {resp.url}: {resp.status} {body}")
    return body


async def _calls(session: aiohttp.ClientSession) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        async with session.get("/v1/calls", params=params) as resp:
            page = await _json(resp, 200)
        out.extend(page["data"])
        if not page["hasMore"]:
            return out
        cursor = page["nextCursor"]


def _peak(calls: list[dict[str, Any]]) -> int:
    edges = sorted(
        [(datetime.fromisoformat(c["createdAt"]), 1) for c in calls]
        + [(datetime.fromisoformat(c["endedAt"]), -1) for c in calls]
    )
    live = peak = 0
    for _, step in edges:
        live += step
        peak = max(peak, live)
    return peak


async def _bench(
    backend: str, server: harness.Server, key: str, args: argparse.Namespace
) -> Result:
    result = Result(backend, args.recipients, args.cap, args.ring_ms)
    async with aiohttp.ClientSession(
        base_url=server.base,
        headers={"Authorization": f"Bearer {key}"},
        timeout=aiohttp.ClientTimeout(total=120),
    ) as session:
        await server.wait_ready(session)
        async with session.patch("/v1/project", json={"maxConcurrentCalls": args.cap}) as resp:
            await _json(resp, 200)
        agent = {
            "name": "bench",
            "webhookUrl": "https://example.com/hook",
            "greeting": "Hi {{variables.name}}",
        }
        async with session.post("/v1/agents", json=agent) as resp:
            agent_id = (await _json(resp, 201))["id"]
        async with session.post("/v1/numbers", json={"agentId": agent_id}) as resp:
            await _json(resp, 201)
        body = {
            "agentId": agent_id,
            "recipients": recipients(args.recipients),
            "retry": {"attempts": 1},
        }
        idle_0 = harness._cpu_seconds(server.proc.pid)
        await asyncio.sleep(IDLE_SECONDS)
        idle_rate = (harness._cpu_seconds(server.proc.pid) - idle_0) / IDLE_SECONDS
        cpu_0 = harness._cpu_seconds(server.proc.pid)
        started = time.perf_counter()
        async with session.post("/v1/calls/batch", json=body) as resp:
            batch = await _json(resp, 202)
        result.create_s = time.perf_counter() - started
        while True:  # the queue's counts: cheap to read, unlike the batch's 500 rows
            await asyncio.sleep(0.2)
            async with session.get("/v1/calls/queue/stats") as resp:
                stats = await _json(resp, 200)
            if stats["completed"] + stats["failed"] >= args.recipients:
                break
        result.batch_s = time.perf_counter() - started
        cpu = harness._cpu_seconds(server.proc.pid) - cpu_0
        async with session.get(f"/v1/batches/{batch['id']}") as resp:
            if (await _json(resp, 200))["state"] != "completed":
                raise RuntimeError("every recipient ended but the batch is not completed")
        calls = await _calls(session)
    result.calls = len(calls)
    result.cpu_ms_per_call = 1000 * cpu / max(1, len(calls))
    idle = idle_rate * result.batch_s
    result.cpu_ms_per_call_idle_adjusted = 1000 * max(0.0, cpu - idle) / max(1, len(calls))
    result.idle_cpu_pct = 100 * idle_rate
    created = sorted(datetime.fromisoformat(c["createdAt"]) for c in calls)
    span = (created[-1] - created[0]).total_seconds() if len(created) > 1 else 0.0
    result.dial_rate_per_s = (len(created) - 1) / span if span else 0.0
    result.peak_live = _peak(calls)
    return result


def run_backend(backend: str, args: argparse.Namespace) -> Result:
    database = (
        harness._sqlite_database()
        if backend == "sqlite"
        else harness._postgres_database(args.pg_dsn)
    )
    with database as (url, schema), tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workdir = Path(tmp)
        port = harness._free_port()
        env = harness._relay_env(url, schema, port)
        env["RELAY_OUTBOUND_RING_TIMEOUT_SECONDS"] = str(args.ring_ms / 1000)
        if args.interval_ms is not None:
            env["RELAY_DIAL_QUEUE_INTERVAL_SECONDS"] = str(args.interval_ms / 1000)
        key = harness.create_key(env, workdir)
        server = harness.Server(env, port, workdir)
        try:
            return asyncio.run(_bench(backend, server, key, args))
        except BaseException:
            print(server.log_tail(), file=sys.stderr)
            raise
        finally:
            server.stop()


def _print(r: Result) -> None:
    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    print(f"[{r.backend}] {r.recipients} recipients, cap {r.cap}, rings of {r.ring_ms:g} ms")
    print(
        f"  create     {r.create_s * 1000:8.1f} ms   (target <= 1000: "
        f"{ok(r.create_s <= TARGET_CREATE_S)})"
    )
    print(
        f"  cpu/call   {r.cpu_ms_per_call:8.2f} ms   idle-adjusted "
        f"{r.cpu_ms_per_call_idle_adjusted:.2f} ms (target <= 5: "
        f"{ok(r.cpu_ms_per_call_idle_adjusted <= TARGET_CPU_MS)}; idle relay "
        f"{r.idle_cpu_pct:.1f}% CPU)"
    )
    print(
        f"  dial rate  {r.dial_rate_per_s:8.1f} calls/s at the cap; peak live {r.peak_live} "
        f"(cap {r.cap}); {r.calls} calls in {r.batch_s:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--recipients", type=int, default=500)
    parser.add_argument("--cap", type=int, default=10)
    parser.add_argument("--ring-ms", type=float, default=50.0)
    parser.add_argument(
        "--interval-ms",
        type=float,
        default=None,
        help="RELAY_DIAL_QUEUE_INTERVAL_SECONDS, in ms (default: the relay's own)",
    )
    parser.add_argument("--pg-dsn", default=harness.DEFAULT_PG_DSN)
    args = parser.parse_args(argv)
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    results = []
    for backend in backends:
        result = run_backend(backend, args)
        _print(result)
        results.append(result)
    print(json.dumps([asdict(r) for r in results]))
    bad = [r for r in results if r.calls != r.recipients or r.peak_live > r.cap]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
