"""Health, readiness, metrics, the OpenAPI document and the offline docs page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import swagger_ui_bundle
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.metrics import REGISTRY
from relay.state import APP_STATE

OPENAPI_DOC: web.AppKey[dict[str, Any]] = web.AppKey("openapi_doc", dict)
SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Conversation Relay API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    db = request.app[APP_STATE].db
    try:
        await db.ping()
        current = await db.migrations_current()
    except Exception as exc:  # any failure to reach the DB means "not ready"
        return web.json_response(
            {"status": "unavailable", "database": "unreachable", "detail": type(exc).__name__},
            status=503,
        )
    if not current:
        return web.json_response(
            {"status": "unavailable", "database": "ok", "migrations": "pending"}, status=503
        )
    return web.json_response({"status": "ok", "database": "ok", "migrations": "current"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(request.app[OPENAPI_DOC]), content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html")


def install(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/docs", docs)
    app.router.add_static("/docs/static", SWAGGER_DIR)
