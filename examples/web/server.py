"""For sites that keep every key on the server: create the web call there, hand the page only
the call's one-time token. Pair it with ``<relay-call session-url="/web-call">``.

    RELAY_URL=https://relay.example.com RELAY_SECRET_KEY=sk_... AGENT_ID=agt_... \\
        python examples/web/server.py        # then open http://127.0.0.1:8000/

The page gets ``joinUrl``, ``token`` (good for 5 minutes, for this call only) and
``iceServers``; your secret key never leaves this process. Check your own user's session in
``web_call`` before creating a call for them.
"""

from __future__ import annotations

import os

import aiohttp
from aiohttp import web

RELAY_URL = os.environ.get("RELAY_URL", "http://127.0.0.1:8080").rstrip("/")
PAGE = """<!doctype html><meta charset="utf-8"><title>Web call</title>
<script type="module" src="{relay}/widget/relay-call.js"></script>
<relay-call session-url="/web-call"></relay-call>"""


async def web_call(request: web.Request) -> web.Response:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{RELAY_URL}/v1/calls",
            json={
                "agentId": os.environ["AGENT_ID"],
                "connectionType": "webrtc",
                "metadata": {"page": request.headers.get("Referer", "")},
            },
            headers={"Authorization": f"Bearer {os.environ['RELAY_SECRET_KEY']}"},
        )
        call = await resp.json()
    if resp.status != 201:
        return web.json_response(call, status=resp.status)
    return web.json_response(
        {key: call[key] for key in ("id", "joinUrl", "token", "iceServers")}, status=201
    )


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE.format(relay=RELAY_URL), content_type="text/html")


def app() -> web.Application:
    application = web.Application()
    application.router.add_get("/", page)
    application.router.add_post("/web-call", web_call)
    return application


if __name__ == "__main__":
    web.run_app(app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
