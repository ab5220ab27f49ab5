"""The aiohttp application factory: routes, state, start-up and clean shutdown."""

from __future__ import annotations

import gc
import hashlib

from aiohttp import web

from relay import events
from relay.api import media, system
from relay.api.agents import router as agents_router
from relay.api.calls import router as calls_router
from relay.api.intelligence import router as intelligence_router
from relay.api.openapi import build as build_openapi
from relay.api.project import router as project_router
from relay.api.recordings import router as recordings_router
from relay.api.routing import Router
from relay.api.webhook_endpoints import router as webhook_endpoints_router
from relay.calls import intelligence, recordings, recovery
from relay.carriers import CarrierRegistry
from relay.carriers.sim import SimCarrier
from relay.config import Settings
from relay.logs import get_logger
from relay.middleware import request_middleware
from relay.ratelimit import RateLimiter
from relay.state import APP_STATE, AppState
from relay.store.db import Database
from relay_numbers import router as numbers_router
from sms import sim as sms_sim
from sms import twilio as sms_twilio
from sms.api import router as sms_router
from sms.service import install as install_sms

log = get_logger("relay.app")
ROUTERS: tuple[Router, ...] = (
    agents_router,
    numbers_router,
    sms_router,
    sms_sim.router,
    calls_router,
    webhook_endpoints_router,
    intelligence_router,
    recordings_router,
    project_router,
)


def create_app(settings: Settings | None = None, *, db: Database | None = None) -> web.Application:
    """Build the relay. ``db`` may be passed in (tests do); it is closed on cleanup either way,
    by the last app using it."""
    settings = settings or Settings()
    database = db or Database(settings.database_url, schema=settings.database_schema)
    database.attach()
    events.attach(database)  # its sessions write the lifecycle events emitted in them
    state = AppState(
        settings=settings,
        db=database,
        carriers=CarrierRegistry([SimCarrier()], default="sim"),
        limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
    )
    if settings.signing_secret:
        state.signing_key = hashlib.sha256(settings.signing_secret.encode()).digest()
    app = web.Application(middlewares=[request_middleware], client_max_size=settings.max_body_bytes)
    app[APP_STATE] = state
    system.install(app)
    media.install(app)
    endpoints = []
    for router in ROUTERS:
        router.install(app)
        endpoints.extend(router.endpoints)
    app[system.OPENAPI_DOC] = build_openapi(endpoints)
    recovery.install(app)
    app.on_startup.append(_startup)
    app.on_cleanup.append(_cleanup)
    install_sms(app, settings, database)  # after _startup: its recovery needs the schema
    intelligence.install(app)  # post-call worker; after _startup for the same reason
    recordings.install(app)  # retention purge; the same
    sms_twilio.install(app)
    app.on_startup.append(_settled)  # last: after every start-up hook above
    return app


async def _settled(app: web.Application) -> None:
    # What start-up made (the app, its routes and schemas, SQLAlchemy's mappers and compiled
    # statements: ~250k objects) lives as long as the process. Every full garbage collection
    # walked all of it: a 100-200 ms stop of the event loop, every text and call's turn
    # waiting, a few times a minute under load. Frozen, collections skip it.
    gc.collect()
    gc.freeze()


async def _startup(app: web.Application) -> None:
    state = app[APP_STATE]
    if state.settings.auto_migrate:
        await state.db.migrate()
    await recovery.start(app)
    log.info("relay_started", database=state.db.engine.url.render_as_string(hide_password=True))


async def _cleanup(app: web.Application) -> None:
    await recovery.stop(app)
    await app[APP_STATE].db.detach()
    log.info("relay_stopped")
