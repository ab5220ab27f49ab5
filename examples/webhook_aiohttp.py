"""An agent webhook you can copy: verifies the relay's signature and streams NDJSON.

Every caller turn (and every text message) reaches ``POST /agent`` as a signed
``agent.message`` event. This one plays the front desk of a small restaurant with keyword
rules; swap :func:`reply_for` for your LLM and keep the rest.

Run it from the repository root (``WEBHOOK_SECRET`` is the agent's ``webhookSecret``)::

    WEBHOOK_SECRET=whsec_... PORT=8090 python -m examples.webhook_aiohttp

then point the agent at it (a 127.0.0.1 URL needs ``RELAY_ALLOW_PRIVATE_WEBHOOKS=1``)::

    curl -X PATCH $BASE/v1/agents/agt_... -H "Authorization: Bearer $RELAY_KEY" \\
         -H 'Content-Type: application/json' -d '{"webhookUrl": "http://127.0.0.1:8090/agent"}'

What the relay does with the answer: each NDJSON line is one object; its ``text`` is spoken
(or, for SMS, joined into the reply) as soon as the line arrives, so send the first sentence
while you are still working on the rest. ``hangup: true`` ends a call after the words,
``state`` comes back as ``conversationState`` on the next turn. ``relay demo`` runs this
very app.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET: web.AppKey[str] = web.AppKey("secret", str)
NAME = "the Corner Bistro"

HOURS = "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve"
Chunk = dict[str, Any]


def _find(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1) if match else None


def reply_for(text: str, state: dict[str, Any], channel: str) -> list[Chunk]:
    """Your logic goes here: what the caller said -> the lines to stream back.

    Each dict becomes one NDJSON line. Speech-to-text writes numbers either way ("two" or
    "2"), so the rules accept both.
    """
    said = text.lower()
    if any(word in said for word in ("bye", "that's all", "hang up")):
        goodbye: Chunk = {"text": f"Thanks for calling {NAME}. Goodbye!"}
        return [{**goodbye, "hangup": True} if channel == "voice" else goodbye]
    if any(word in said for word in ("book", "table", "reserv")):
        party = _find(r"\bfor (\w+)", said)
        at = _find(rf"\bat (\d{{1,2}}(?::\d\d)?|{HOURS})\b", said)
        table = f"a table for {party}" if party and party not in ("a", "the", "me") else "a table"
        when = f" at {at}" if at else " tonight"
        return [
            {"text": "Sure, let me check.", "interim": True},
            {"text": f"I have booked {table}{when}.", "interim": True},
            {"text": "Anything else?", "state": {**state, "booked": f"{table}{when}"}},
        ]
    if any(word in said for word in ("open", "hour", "close", "time")):
        return [
            {"text": "We are open every day from noon until ten in the evening.", "interim": True},
            {"text": "The kitchen takes its last orders at half past nine."},
        ]
    if any(word in said for word in ("menu", "vegan", "vegetarian", "food")):
        return [{"text": "Tonight we have fresh pasta, grilled fish and a vegan risotto."}]
    return [{"text": "I can tell you our opening hours or book you a table. Which would you like?"}]


async def agent(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    try:
        # Checks the HMAC over id, timestamp and body, and that the timestamp is recent.
        event = Webhook(request.app[SECRET]).verify(body, dict(request.headers))
    except WebhookVerificationError:
        return web.json_response({"error": "bad signature"}, status=401)
    if event.get("event") != "agent.message":
        return web.json_response({})  # nothing to say to other events
    data = event.get("data", {})
    channel = event.get("channel", "voice")
    state = event.get("conversationState") or {}
    if data.get("dtmf"):
        chunks: list[Chunk] = [{"text": f"You pressed {data['dtmf']}."}]
    else:
        # voice: data.transcript (what speech-to-text heard); sms: data.text
        said = data.get("transcript") if channel == "voice" else data.get("text")
        chunks = reply_for(str(said or ""), state, channel)

    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(json.dumps(chunk).encode() + b"\n")
        await asyncio.sleep(0)  # a real handler awaits its LLM here, token by token
    await response.write_eof()
    return response


def make_app(secret: str) -> web.Application:
    """The webhook app, verifying with ``secret`` (the agent's ``webhookSecret``)."""
    app = web.Application()
    app[SECRET] = secret
    app.router.add_post("/agent", agent)
    return app


def main() -> None:
    secret = os.environ.get("WEBHOOK_SECRET", "")
    if not secret.startswith("whsec_"):
        raise SystemExit("set WEBHOOK_SECRET to the agent's webhookSecret (whsec_...)")
    host = os.environ.get("HOST", "127.0.0.1")
    web.run_app(make_app(secret), host=host, port=int(os.environ.get("PORT", "8090")))


if __name__ == "__main__":
    main()
