"""A complete agent webhook in ~60 lines: verifies the relay's signature, streams NDJSON.

Run it:  python examples/webhook_aiohttp.py --secret whsec_... --port 8090
then point an agent at it:  PATCH /v1/agents/{id} {"webhookUrl": "http://127.0.0.1:8090/agent"}
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET: web.AppKey[str] = web.AppKey("secret", str)


def reply_for(transcript: str) -> list[dict[str, object]]:
    """Your logic goes here. Each dict is one NDJSON line; the relay speaks each as it comes."""
    text = transcript.strip().rstrip(".!?")
    if any(word in text.lower() for word in ("bye", "goodbye")):
        return [{"text": "Thanks for calling. Goodbye!", "hangup": True}]
    return [
        {"text": "Got it.", "interim": True},
        {"text": f"You said: {text}.", "state": {"lastHeard": text}},
    ]


async def agent(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    try:
        event = Webhook(request.app[SECRET]).verify(body, dict(request.headers))
    except WebhookVerificationError:
        return web.json_response({"error": "bad signature"}, status=401)
    if event.get("channel") == "sms":
        return web.json_response({"text": f"Thanks for your text: {event['data']['text']}"})
    if event["data"].get("dtmf"):
        return web.json_response({"text": f"You pressed {event['data']['dtmf']}."})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for chunk in reply_for(event["data"].get("transcript", "")):
        await response.write(json.dumps(chunk).encode() + b"\n")
        await asyncio.sleep(0)  # a real handler awaits its LLM here, token by token
    await response.write_eof()
    return response


def make_app(secret: str) -> web.Application:
    app = web.Application()
    app[SECRET] = secret
    app.router.add_post("/agent", agent)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--secret", required=True, help="the agent's webhookSecret")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    web.run_app(make_app(args.secret), host="127.0.0.1", port=args.port)
