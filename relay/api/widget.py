"""The browser side of web calls, served by the relay: ``GET /widget/relay-call.js``.

A dependency-free ES module (``RelayCall.start``, the ``<relay-call>`` element), README
"Web calls". Module scripts loaded from another origin need CORS, and the file is public,
so it is served to any origin.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

SCRIPT = "relay-call.js"
HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Cache-Control": "public, max-age=300",
    "X-Content-Type-Options": "nosniff",
}


def install(app: web.Application) -> None:
    source = resources.files("relay.api").joinpath("static", SCRIPT).read_text("utf-8")

    async def script(request: web.Request) -> web.Response:
        return web.Response(text=source, content_type="text/javascript", headers=HEADERS)

    app.router.add_get(f"/widget/{SCRIPT}", script)
