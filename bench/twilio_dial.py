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

from relay.handset.fake_twilio import FakeTwilio  # noqa: E402

ACCOUNT_SID, AUTH_TOKEN = "AC" + "b" * 32, "bench-twilio-auth-token"
FROM = "+14155550150"


async def _call(
    http: aiohttp.ClientSession, fake: FakeTwilio, agent_id: str, i: int
) -> tuple[float, float, list[float]]:
    to = bench.callee(i)
    began = time.perf_counter()
    async with http.post("/v1/calls", json={"agentId": agent_id, "to": to}) as resp:
        await bench.expect(resp, 202, "POST /v1/calls")
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

    async def one(i: int) -> None:
        took, answered, cbs = await _call(http, fake, agent_id, i)
        dial.append(took)
        api.append(answered)
        callbacks.extend(cbs)

    await bench.at_a_time(calls, concurrency, one)
    return {
        "concurrency": concurrency,
        "calls": calls,
        "dial": bench.percentiles(dial),
        "api_response": bench.percentiles(api),
        "callback": bench.percentiles(callbacks),
        "callbacks": len(callbacks),
    }


async def _bench(args: Any, url: str, schema: str) -> list[dict[str, Any]]:
    fake = FakeTwilio(ACCOUNT_SID, AUTH_TOKEN)
    fake.voice.busy.update(bench.callee(i) for i in range(10_000))
    async with bench.served(fake.app()) as fake_url:
        settings = {
            "RELAY_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "RELAY_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "RELAY_TWILIO_API_BASE_URL": fake_url,
        }
        try:
            async with bench.relay(url, schema, settings) as (http, agent_id):
                body = {"provider": "twilio", "phoneNumber": FROM, "agentId": agent_id}
                async with http.post("/v1/numbers/import", json=body) as resp:
                    await bench.expect(resp, 201, "import")
                await _round(http, fake, agent_id, 5, 1)  # warm-up: imports, connections
                return [await _round(http, fake, agent_id, args.calls, c) for c in args.concurrency]
        finally:
            await fake.settle()


def main(argv: list[str] | None = None) -> int:
    args = bench.arguments(__doc__, argv)
    with bench.database(args) as (url, schema):
        rounds = asyncio.run(_bench(args, url, schema))
    print(f"outbound Twilio calls, {args.backend}, {os.cpu_count()} cores")
    for r in rounds:
        c, a = r["callback"], r["api_response"]
        print(
            f"{bench.dial_line(r)} the 202 p50 {a['p50_ms']} ms;"
            f" status callback p50 {c['p50_ms']} / p99 {c['p99_ms']} ms"
            f" ({r['callbacks']} callbacks)"
        )
    print(json.dumps({"backend": args.backend, "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
