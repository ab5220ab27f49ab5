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

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dial_bench as bench  # noqa: E402  (bench/dial_bench.py: what the dial benchmarks share)

from relay.handset.fake_telnyx import BUSY, FakeTelnyx  # noqa: E402
from relay.secretbox import new_key  # noqa: E402

FROM = "+13125550150"


async def _one(http: aiohttp.ClientSession, fake: FakeTelnyx, agent_id: str, to: str) -> float:
    began = time.perf_counter()
    async with http.post("/v1/calls", json={"agentId": agent_id, "to": to}) as resp:
        call_id = (await bench.expect(resp, 202, "POST /v1/calls"))["id"]
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


async def _round(
    http: aiohttp.ClientSession, fake: FakeTelnyx, agent_id: str, calls: int, concurrency: int
) -> dict[str, Any]:
    dial: list[float] = []
    fake.webhook_seconds.clear()

    async def one(i: int) -> None:
        dial.append(await _one(http, fake, agent_id, bench.callee(i)))

    await bench.at_a_time(calls, concurrency, one)
    hooks = list(fake.webhook_seconds)
    return {
        "concurrency": concurrency,
        "calls": calls,
        "dial": bench.percentiles(dial),
        "webhook": bench.percentiles(hooks),
    }


async def _bench(args: Any, url: str, schema: str) -> list[dict[str, Any]]:
    fake = FakeTelnyx(ring_seconds=0.2)
    fake.callees.update({bench.callee(i): BUSY for i in range(10_000)})
    account = fake.add_account({FROM})
    async with bench.served(fake.app()) as fake_url:
        settings = {"RELAY_ENCRYPTION_KEY": new_key(), "RELAY_TELNYX_API_BASE_URL": fake_url}
        try:
            async with bench.relay(url, schema, settings) as (http, agent_id):
                creds = {"provider": "telnyx", "credentials": fake.credentials(account)}
                async with http.post("/v1/carrier-accounts", json=creds) as resp:
                    account_id = (await bench.expect(resp, 201, "account"))["id"]
                body = {
                    "provider": "telnyx",
                    "phoneNumber": FROM,
                    "carrierAccountId": account_id,
                    "agentId": agent_id,
                }
                async with http.post("/v1/numbers/import", json=body) as resp:
                    await bench.expect(resp, 201, "import")
                await _round(http, fake, agent_id, 5, 1)  # warm-up
                return [await _round(http, fake, agent_id, args.calls, c) for c in args.concurrency]
        finally:
            await fake.settle()


def main(argv: list[str] | None = None) -> int:
    args = bench.arguments(__doc__, argv)
    with bench.database(args) as (url, schema):
        rounds = asyncio.run(_bench(args, url, schema))
    print(f"outbound Telnyx calls, {args.backend}, {os.cpu_count()} cores")
    for r in rounds:
        w = r["webhook"]
        print(f"{bench.dial_line(r)} webhook round trip p50 {w['p50_ms']} / p99 {w['p99_ms']} ms")
    print(json.dumps({"backend": args.backend, "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
