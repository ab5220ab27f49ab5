"""Outbound Telnyx call overhead: the relay's time between ``POST /v1/calls`` and its
``POST /v2/calls`` to Telnyx, and the round trip of Telnyx's signed ``call.hangup`` webhook.

A real ``relay serve`` subprocess (SQLite, or ``--backend postgresql``) whose Telnyx is the
fake (:mod:`relay.handset.fake_telnyx`) in this process. Every callee is busy, so each call
is dialled, rings 0.2 s and ends ``busy`` through the webhook; no media, no speech engine.

* dial: ``POST /v1/calls`` sent -> the fake's ``POST /v2/calls`` handler entered (target:
  p99 <= 20 ms): the API request, the call stored, the dialler's claim, the account's
  credentials opened, the carrier request;
* webhook: the fake's signed ``call.hangup`` round trip (signature check, routing, the
  dialler's report).

    .venv/bin/python bench/telnyx_dial.py            # 200 calls, 1 then 8 at a time
    .venv/bin/python bench/telnyx_dial.py --quick    # 20 calls

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

from relay.handset.fake_telnyx import BUSY, FakeTelnyx  # noqa: E402
from relay.secretbox import new_key  # noqa: E402

FROM = "+13125550150"
AGENT = {"name": "Bench", "webhookUrl": "https://example.com/relay-webhook"}  # never asked


def _callee(i: int) -> str:
    return f"+1212555{i % 10_000:04d}"


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {f"p{p}_ms": round(harness._percentile(ordered, p) * 1000, 2) for p in (50, 90, 99)} | {
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else 0.0
    }


async def _one(http: aiohttp.ClientSession, fake: FakeTelnyx, agent_id: str, to: str) -> float:
    began = time.perf_counter()
    async with http.post("/v1/calls", json={"agentId": agent_id, "to": to}) as resp:
        if resp.status != 202:
            raise RuntimeError(f"POST /v1/calls: {resp.status} {await resp.text()}")
        call_id = (await resp.json())["id"]
    while not (found := [c for c in fake.calls.values() if c.to_number == to]):  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # the fake times the arrival itself
    [call] = found
    await asyncio.wait_for(call.done.wait(), 30)
    while True:  # the relay has taken the hang-up: the call failed busy
        async with http.get(f"/v1/calls/{call_id}") as resp:
            body = await resp.json()
        if body["status"] == "failed":
            break
        await asyncio.sleep(0.01)
    if body["failureReason"] != "busy":
        raise RuntimeError(f"call ended {body['failureReason']}, not busy")
    del fake.calls[call.call_control_id]
    return call.arrived_at - began


async def _round(http, fake, agent_id, calls: int, concurrency: int) -> dict[str, Any]:
    dial: list[float] = []
    fake.webhook_seconds.clear()
    gate = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with gate:
            dial.append(await _one(http, fake, agent_id, _callee(i)))

    await asyncio.gather(*(run(i) for i in range(calls)))
    hooks = list(fake.webhook_seconds)
    return {"concurrency": concurrency, "calls": calls, "dial": _ms(dial), "webhook": _ms(hooks)}


async def _bench(args: argparse.Namespace, url: str, schema: str) -> list[dict[str, Any]]:
    fake = FakeTelnyx(ring_seconds=0.2)
    fake.callees.update({_callee(i): BUSY for i in range(10_000)})
    account = fake.add_account({FROM})
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workdir = Path(tmp)
        port = harness._free_port()
        env = harness._relay_env(url, schema, port)
        base = f"http://127.0.0.1:{port}"
        env.update(
            RELAY_PUBLIC_URL=base,
            RELAY_ENCRYPTION_KEY=new_key(),
            RELAY_TELNYX_API_BASE_URL=fake_url,
            RELAY_OUTBOUND_RING_TIMEOUT_SECONDS="10",
        )
        key = harness.create_key(env, workdir)
        server = harness.Server(env, port, workdir)
        try:
            headers = {"Authorization": f"Bearer {key}"}
            async with aiohttp.ClientSession(base, headers=headers) as http:
                await server.wait_ready(http)
                async with http.post("/v1/agents", json=AGENT) as resp:
                    agent_id = (await resp.json())["id"]
                creds = {"provider": "telnyx", "credentials": fake.credentials(account)}
                async with http.post("/v1/carrier-accounts", json=creds) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"account: {resp.status} {await resp.text()}")
                    account_id = (await resp.json())["id"]
                body = {
                    "provider": "telnyx",
                    "phoneNumber": FROM,
                    "carrierAccountId": account_id,
                    "agentId": agent_id,
                }
                async with http.post("/v1/numbers/import", json=body) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"import: {resp.status} {await resp.text()}")
                await _round(http, fake, agent_id, 5, 1)  # warm-up
                return [await _round(http, fake, agent_id, args.calls, c) for c in args.concurrency]
        finally:
            server.stop()
            await fake.settle()
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--calls", type=int, default=200, help="calls per round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
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
    print(f"outbound Telnyx calls, {args.backend}, {os.cpu_count()} cores")
    for r in rounds:
        d, w = r["dial"], r["webhook"]
        print(
            f"  {r['calls']} calls, {r['concurrency']} at a time: dial p50 {d['p50_ms']} /"
            f" p90 {d['p90_ms']} / p99 {d['p99_ms']} / max {d['max_ms']} ms;"
            f" webhook round trip p50 {w['p50_ms']} / p99 {w['p99_ms']} ms"
        )
    print(json.dumps({"backend": args.backend, "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
