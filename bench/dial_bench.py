"""What the outbound-dial benchmarks (``bench/twilio_dial.py``, ``bench/telnyx_dial.py``)
share: their command line, the database, a ``relay serve`` with an agent, a carrier fake
served on loopback, calls run N at a time, and percentiles.

Each benchmark brings its carrier: the fake, the relay's settings for it, the number it
imports, and what one call is (placed through ``POST /v1/calls`` and timed by the fake).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import api as harness  # noqa: E402  (bench/api.py: the relay subprocess and databases)

AGENT = {"name": "Bench", "webhookUrl": "https://example.com/relay-webhook"}  # never asked


def callee(i: int) -> str:
    return f"+1212555{i % 10_000:04d}"


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 / max of ``values`` (seconds), in milliseconds."""
    ordered = sorted(values)
    out = {f"p{p}_ms": round(harness._percentile(ordered, p) * 1000, 2) for p in (50, 90, 99)}
    out["max_ms"] = round(ordered[-1] * 1000, 2) if ordered else 0.0
    return out


def arguments(doc: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--calls", type=int, default=200, help="calls per round")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8], help="calls at a time, per round"
    )
    parser.add_argument("--quick", action="store_true", help="20 calls per round")
    parser.add_argument(
        "--pg-dsn", default=os.environ.get("RELAY_BENCH_PG_DSN", harness.DEFAULT_PG_DSN)
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = 20
    return args


def database(args: argparse.Namespace) -> AbstractContextManager[tuple[str, str]]:
    """A fresh SQLite file or PostgreSQL schema: ``(url, schema)``."""
    if args.backend == "sqlite":
        return harness._sqlite_database()
    return harness._postgres_database(args.pg_dsn)


@asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """``app`` (a carrier's fake) on a loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def expect(resp: aiohttp.ClientResponse, status: int, what: str) -> Any:
    if resp.status != status:
        raise RuntimeError(f"{what}: {resp.status} {await resp.text()}")
    return await resp.json()


@asynccontextmanager
async def relay(
    url: str, schema: str, settings: dict[str, str]
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """``relay serve`` on the database with the carrier's ``settings`` (``RELAY_*``) and an
    agent; yields an API client with a secret key, and the agent's id."""
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workdir = Path(tmp)
        port = harness._free_port()
        env = harness._relay_env(url, schema, port)
        base = f"http://127.0.0.1:{port}"
        env.update(RELAY_PUBLIC_URL=base, RELAY_OUTBOUND_RING_TIMEOUT_SECONDS="10", **settings)
        key = harness.create_key(env, workdir)
        server = harness.Server(env, port, workdir)
        try:
            headers = {"Authorization": f"Bearer {key}"}
            async with aiohttp.ClientSession(base, headers=headers) as http:
                await server.wait_ready(http)
                async with http.post("/v1/agents", json=AGENT) as resp:
                    agent_id = (await expect(resp, 201, "agent"))["id"]
                yield http, agent_id
        finally:
            server.stop()


async def at_a_time(calls: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    """``one(i)`` for each of ``calls`` calls, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with gate:
            await one(i)

    await asyncio.gather(*(run(i) for i in range(calls)))


def dial_line(r: dict[str, Any]) -> str:
    """The start of a round's report line: its calls and the dial percentiles."""
    d = r["dial"]
    return (
        f"  {r['calls']} calls, {r['concurrency']} at a time: dial p50 {d['p50_ms']} /"
        f" p90 {d['p90_ms']} / p99 {d['p99_ms']} / max {d['max_ms']} ms;"
    )
