"""Outbound Twilio call overhead: the relay's time between ``POST /v1/calls`` and the request
it makes to Twilio's Calls resource, and the time it takes to take Twilio's status callbacks.

A real ``relay serve`` subprocess (SQLite by default, ``--backend postgresql`` for a schema of
its own) whose Twilio REST API is the fake Twilio (:mod:`relay.handset.fake_twilio`) in this
process, on loopback. Every callee is busy: each call is placed, rings and ends ``busy``, so
the whole REST and status-callback path runs and no media (no speech engine) does.

* dial: ``POST /v1/calls`` sent -> the fake's Calls.json handler entered (p50/p90/p99/max):
  the API request, the call stored, the dialler's claim and the carrier request, as the
  carrier sees it (target: p99 <= 20 ms);
* the 202: ``POST /v1/calls`` sent -> its answer received (the API's own time, for scale);
* callback: a signed status callback's round trip as the fake sees it (signature check,
  routing, the dialler's update of the call).

Calls run ``--concurrency`` at a time. The fake and the caller share this process (one core)
with each other, the relay has its own.

    .venv/bin/python bench/twilio_dial.py                 # 200 calls, 1 then 8 at a time
    .venv/bin/python bench/twilio_dial.py --quick         # 20 calls: a smoke run

Prints a readable report, then one line of JSON with the same numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import api as harness  # noqa: E402  (bench/api.py: the relay subprocess and databases)

from relay.handset.fake_twilio import FakeTwilio  # noqa: E402

ACCOUNT_SID, AUTH_TOKEN = "AC" + "b" * 32, "bench-twilio-auth-token"
FROM = "+14155550150"
AGENT = {"name": "Bench", "webhookUrl": "https://example.com/relay-webhook"}  # never asked


def _callee(i: int) -> str:
    return f"+1212555{i % 10_000:04d}"


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pct = harness._percentile
    return {
        "p50_ms": round(pct(ordered, 50) * 1000, 2),
        "p90_ms": round(pct(ordered, 90) * 1000, 2),
        "p99_ms": round(pct(ordered, 99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else 0.0,
    }


async def _serve_fake(fake: FakeTwilio) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _call(
    http: aiohttp.ClientSession, fake: FakeTwilio, agent_id: str, i: int
) -> tuple[float, float, list[float]]:
    to = _callee(i)
    began = time.perf_counter()
    async with http.post("/v1/calls", json={"agentId": agent_id, "to": to}) as resp:
        if resp.status != 202:
            raise RuntimeError(f"POST /v1/calls: {resp.status} {await resp.text()}")
    answered = time.perf_counter() - began
    call = await asyncio.wait_for(fake.voice.call_to(to), 30)
    await asyncio.wait_for(call.ended.wait(), 30)
    if [s for s, code in call.callbacks if code != 204]:
        raise RuntimeError(f"a status callback was refused: {call.callbacks}")
    del fake.voice.calls[call.sid]
    return call.arrived_at - began, answered, call.callback_seconds


async def _round(
    http: aiohttp.ClientSession, fake: FakeTwilio, agent_id: str, calls: int, concurrency: int
) -> dict[str, Any]:
    dial: list[float] = []
    api: list[float] = []
    callbacks: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    counter = iter(range(calls))

    async def one(i: int) -> None:
        async with gate:
            took, answered, cbs = await _call(http, fake, agent_id, i)
            dial.append(took)
            api.append(answered)
            callbacks.extend(cbs)

    await asyncio.gather(*(one(next(counter)) for _ in range(calls)))
    return {
        "concurrency": concurrency,
        "calls": calls,
        "dial": _stats(dial),
        "api_response": _stats(api),
        "callback": _stats(callbacks),
        "callbacks": len(callbacks),
    }


async def _bench(args: argparse.Namespace, url: str, schema: str) -> list[dict[str, Any]]:
    fake = FakeTwilio(ACCOUNT_SID, AUTH_TOKEN)
    fake.voice.busy.update(_callee(i) for i in range(10_000))
    runner, fake_url = await _serve_fake(fake)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workdir = Path(tmp)
        port = harness._free_port()
        env = harness._relay_env(url, schema, port)
        base = f"http://127.0.0.1:{port}"
        env.update(
            RELAY_PUBLIC_URL=base,
            RELAY_TWILIO_ACCOUNT_SID=ACCOUNT_SID,
            RELAY_TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            RELAY_TWILIO_API_BASE_URL=fake_url,
            RELAY_OUTBOUND_RING_TIMEOUT_SECONDS="10",
        )
        key = harness.create_key(env, workdir)
        server = harness.Server(env, port, workdir)
        headers = {"Authorization": f"Bearer {key}"}
        try:
            async with aiohttp.ClientSession(base, headers=headers) as http:
                await server.wait_ready(http)
                async with http.post("/v1/agents", json=AGENT) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"agent: {resp.status} {await resp.text()}")
                    agent_id = (await resp.json())["id"]
                body = {"provider": "twilio", "phoneNumber": FROM, "agentId": agent_id}
                async with http.post("/v1/numbers/import", json=body) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"import: {resp.status} {await resp.text()}")
                await _round(http, fake, agent_id, 5, 1)  # warm-up: imports, connections
                rounds = []
                for concurrency in args.concurrency:
                    rounds.append(await _round(http, fake, agent_id, args.calls, concurrency))
                return rounds
        finally:
            server.stop()
            await fake.settle()
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    database: AbstractContextManager[tuple[str, str]] = (
        harness._sqlite_database()
        if args.backend == "sqlite"
        else harness._postgres_database(args.pg_dsn)
    )
    with database as (url, schema):
        rounds = asyncio.run(_bench(args, url, schema))
    print(f"outbound Twilio calls, {args.backend}, {os.cpu_count()} cores")
    for r in rounds:
        d, c, a = r["dial"], r["callback"], r["api_response"]
        print(
            f"  {r['calls']} calls, {r['concurrency']} at a time:"
            f" dial p50 {d['p50_ms']} / p90 {d['p90_ms']} / p99 {d['p99_ms']} / max"
            f" {d['max_ms']} ms; the 202 p50 {a['p50_ms']} ms;"
            f" status callback p50 {c['p50_ms']} / p99 {c['p99_ms']} ms"
            f" ({r['callbacks']} callbacks)"
        )
    print(json.dumps({"backend": args.backend, "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
