"""Switch an agent to hosted mode by PATCH, with a tool, and serve that tool.

The built-in LLM then answers every call from the system prompt; when it calls
``lookup_order`` the relay POSTs a signed ``tool.call`` event here and reads our answer back.

Run it:  python examples/hosted_agent.py --key sk_... --agent agt_... --secret whsec_...
(``--secret`` is the agent's webhookSecret: tool calls are signed with it. A tool on
127.0.0.1 is a private address: the relay accepts it with RELAY_ALLOW_PRIVATE_WEBHOOKS=1.)
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET: web.AppKey[str] = web.AppKey("secret", str)
ORDERS = {"A-17": "shipped on Monday, arriving Friday", "B-42": "being packed"}


def hosted_settings(tool_url: str) -> dict[str, object]:
    return {
        "voiceMode": "hosted",
        "systemPrompt": (
            "You are Ava, the phone assistant of Acme Shop. The caller's number is "
            "{{call.from}}. Answer in one or two short spoken sentences. Use lookup_order "
            "for order questions. When the caller is done, say goodbye and call end_call."
        ),
        "greeting": "Hi, this is Ava from Acme Shop. How can I help?",
        "temperature": 0.2,
        "tools": [
            {
                "name": "lookup_order",
                "description": "Find the status of an order by its id, like A-17.",
                "parameters": {
                    "type": "object",
                    "properties": {"orderId": {"type": "string"}},
                    "required": ["orderId"],
                },
                "url": tool_url,
                "timeoutMs": 3000,
            },
            {"name": "end_call"},
        ],
        "postCall": {
            "summary": True,
            "sentiment": True,
            "structuredExtraction": {
                "schema": {
                    "type": "object",
                    "properties": {"orderId": {"type": ["string", "null"]}},
                    "required": ["orderId"],
                }
            },
            "evaluation": {"criteria": ["The agent answered the caller's question"]},
        },
    }


async def lookup_order(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        event = Webhook(request.app[SECRET]).verify(body, dict(request.headers))
    except WebhookVerificationError:
        return web.json_response({"error": "bad signature"}, status=401)
    order_id = str(event["data"]["arguments"].get("orderId", "")).upper()
    status = ORDERS.get(order_id)
    if status is None:
        return web.json_response({"result": f"No order {order_id} was found."})
    return web.json_response({"result": {"orderId": order_id, "status": status}})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="http://127.0.0.1:8080")
    parser.add_argument("--key", required=True, help="a secret API key, sk_...")
    parser.add_argument("--agent", required=True, help="the agent to switch, agt_...")
    parser.add_argument("--secret", required=True, help="the agent's webhookSecret")
    parser.add_argument("--port", type=int, default=8091, help="where the tool listens")
    args = parser.parse_args()

    app = web.Application()
    app[SECRET] = args.secret
    app.router.add_post("/tools/lookup_order", lookup_order)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()

    tool_url = f"http://127.0.0.1:{args.port}/tools/lookup_order"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {args.key}"}) as http:
        async with http.patch(
            f"{args.base}/v1/agents/{args.agent}", json=hosted_settings(tool_url)
        ) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise SystemExit(f"PATCH failed ({resp.status}): {body}")
    print(f"{args.agent} is now in {body['voiceMode']} mode; serving its tool at {tool_url}")
    print("Call one of its numbers (relay phone call ...); Ctrl-C to stop.")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
