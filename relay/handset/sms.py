"""``relay phone sms NUMBER TEXT``: a simulated handset texts a sim number of a running relay
and prints what comes back.

It talks to the relay over HTTP (``POST /carriers/sim/sms`` with ``waitSeconds``), with a
secret key from ``--key`` or ``RELAY_KEY``; the relay is ``--url``, ``RELAY_URL`` or the
local default.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import aiohttp

from relay.carriers.sim import DEFAULT_HANDSET
from relay.config import Settings

NO_KEY = "error: pass --key or set RELAY_KEY (a secret key of the number's project)"


def add_sms_command(phone: Any) -> None:
    """Add ``sms`` to the ``relay phone`` subcommands."""
    p = phone.add_parser("sms", help="text a sim number and print the reply")
    p.add_argument("number", help="the relay's sim number to text, E.164 (+14155550123)")
    p.add_argument("text", help="what to text")
    p.add_argument(
        "--from",
        dest="sender",
        default=DEFAULT_HANDSET,
        help=f"handset (default {DEFAULT_HANDSET})",
    )
    p.add_argument("--url", help="the relay (default: RELAY_URL or http://127.0.0.1:8080)")
    p.add_argument("--key", help="secret API key (default: RELAY_KEY)")
    p.add_argument("--wait", type=float, default=35.0, help="seconds to wait for the reply (35)")
    p.set_defaults(func=cmd_phone_sms)


async def _send(url: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=float(body["waitSeconds"]) + 15)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            url.rstrip("/") + "/carriers/sim/sms",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def cmd_phone_sms(args: argparse.Namespace) -> int:
    key = args.key or os.environ.get("RELAY_KEY", "")
    if not key:
        print(NO_KEY, file=sys.stderr)
        return 2
    url = args.url or os.environ.get("RELAY_URL") or Settings().effective_public_url()
    wait = max(0.0, min(args.wait, 60.0))
    body = {"to": args.number, "from": args.sender, "text": args.text, "waitSeconds": wait}
    try:
        status, answer = asyncio.run(_send(url, key, body))
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"error: cannot reach the relay at {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        print(
            f"error: {error.get('message', answer)} ({error.get('code', status)})", file=sys.stderr
        )
        return 1
    print(f"> {args.sender} -> {args.number}: {args.text}")
    if answer["duplicate"]:
        print("  (the relay had this text already)")
    for reply in answer["replies"]:
        print(f"< {reply['from']}: {reply['text']}")
    if answer["timedOut"]:
        print(f"  (no reply within {wait:g} s)")
        return 1
    if not answer["replies"]:
        print("  (no reply)")
    return 0
