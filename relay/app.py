"""The composition root: the one place the relay is put together.

Every long-lived worker is built here, from settings and the database, and started and
stopped through ``app.cleanup_ctx`` in the order written below (started top to bottom,
stopped bottom to top, so nothing outlives what it needs):

    schema         migrations (RELAY_AUTO_MIGRATE), the database's session hooks, the stored
                   carrier credentials (opened with RELAY_ENCRYPTION_KEY, re-encrypted
                   with its first key)
    node           webhook delivery, then recovery of what a dead node left, then dialling,
                   then (PostgreSQL) the commands other nodes send for calls held here
    sms            the SMS service: carriers' texts in, workers, outbound
    post_call      summaries and extraction of completed calls
    recordings     the retention purge
    media          the voice engine's calls: ended at shutdown, before the rest stops

Workers that must stop taking work as soon as the server stops accepting requests (live
calls, SMS, post-call jobs, the purge) do so in ``on_shutdown``, before any of the above is
torn down; their resources go in ``cleanup_ctx``.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import AsyncIterator

from aiohttp import web

from relay import events
from relay.api import carriers as carrier_webhooks
from relay.api import cors, media, system, webrtc, widget
from relay.api.agents import router as agents_router
from relay.api.batches import router as batches_router
from relay.api.call_create import router as call_create_router
from relay.api.calls import router as calls_router
from relay.api.carrier_accounts import router as carrier_accounts_router
from relay.api.compliance import router as compliance_router
from relay.api.dnc import router as dnc_router
from relay.api.intelligence import router as intelligence_router
from relay.api.keys import router as keys_router
from relay.api.messages import router as messages_router
from relay.api.nodes import router as nodes_router
from relay.api.numbers import router as numbers_router
from relay.api.openapi import build as build_openapi
from relay.api.project import router as project_router
from relay.api.recordings import router as recordings_router
from relay.api.routing import Router
from relay.api.voices import router as voices_router
from relay.api.webhook_endpoints import router as webhook_endpoints_router
from relay.calls import voicemail
from relay.calls.commands import COMMANDS, END, VOICEMAIL, CommandBus
from relay.calls.dial_queue import DIAL_QUEUE, DialQueue
from relay.calls.intelligence import INTELLIGENCE, IntelligenceWorker
from relay.calls.intelligence import release_claims as release_analyses
from relay.calls.live import VoiceEngine
from relay.calls.media import MEDIA, MediaRuntime
from relay.calls.outbound import DIALLER, Dialler
from relay.calls.recordings import RECORDINGS, RecordingWorker
from relay.calls.recordings import abandon_claims as abandon_recordings
from relay.calls.recovery import RECOVERY, Recovery
from relay.carriers import CarrierRegistry
from relay.carriers.plivo import PlivoCarrier
from relay.carriers.sim import SimCarrier
from relay.carriers.telnyx import TelnyxCarrier
from relay.carriers.twilio import TwilioCarrier
from relay.config import Settings
from relay.events import DELIVERY, DeliveryWorker
from relay.logs import get_logger
from relay.metrics import NODE
from relay.middleware import request_middleware
from relay.ratelimit import RateLimiter
from relay.secretbox import SecretBox
from relay.state import APP_STATE, AppState
from relay.store.db import Database
from relay.turns import hosted_backend
from relay_numbers.accounts import AccountCarriers, check_stored_credentials
from relay_numbers.telnyx_accounts import TelnyxCarriers
from sms.service import SMS, SmsService

log = get_logger("relay.app")
ROUTERS: tuple[Router, ...] = (
    agents_router,
    numbers_router,
    carrier_accounts_router,
    messages_router,
    carrier_webhooks.sim.router,
    call_create_router,  # first: the Calls section of the OpenAPI document opens with it
    calls_router,
    webhook_endpoints_router,
    intelligence_router,
    recordings_router,
    project_router,
    keys_router,
    dnc_router,
    compliance_router,
    voices_router,
    batches_router,
    nodes_router,
)


def create_app(settings: Settings | None = None, *, db: Database | None = None) -> web.Application:
    """Build the relay. ``db`` may be passed in (tests do); it is closed on cleanup either way,
    by the last app using it."""
    settings = settings or Settings()
    database = db or Database(settings.database_url, schema=settings.database_schema)
    database.attach()
    events.attach(database)  # its sessions write the lifecycle events emitted in them
    # One of each carrier per app, on the deployment's account; a project's own account gets
    # its carrier from this one (relay_numbers.accounts.AccountCarriers).
    sim, twilio = SimCarrier(), TwilioCarrier.from_settings(settings)
    # Telnyx has no deployment account: this one only makes the projects' accounts' carriers.
    telnyx = TelnyxCarrier(
        public_url=settings.effective_public_url(),
        api_base_url=settings.telnyx_api_base_url,
        timeout=settings.carrier_api_timeout_seconds,
    )
    state = AppState(
        settings=settings,
        db=database,
        # Plivo has no deployment account: its calls go through projects' accounts.
        carriers=CarrierRegistry(
            [sim, twilio, telnyx, PlivoCarrier.from_settings(settings)], default="sim"
        ),
        limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
        secret_box=SecretBox(settings.encryption_key),  # a malformed key refuses to start here
    )
    if settings.signing_secret:
        state.signing_key = hashlib.sha256(settings.signing_secret.encode()).digest()
    app = web.Application(
        middlewares=[cors.cors_middleware, request_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[APP_STATE] = state
    _build_workers(app, state, sim=sim, twilio=twilio)
    system.install(app)
    media.install(app)
    webrtc.install(app)
    widget.install(app)
    endpoints = []
    for router in ROUTERS:
        router.install(app)
        endpoints.extend(router.endpoints)
    app[system.OPENAPI_DOC] = build_openapi(endpoints, webrtc.OPENAPI_PATHS)
    cors.install(app)
    carrier_webhooks.sim.install(app)
    carrier_webhooks.twilio.install(app, twilio)
    carrier_webhooks.telnyx.install(app, app[SMS].telnyx)
    carrier_webhooks.plivo.install(app)
    app.cleanup_ctx.extend((_schema, _node, _sms, _post_call, _recordings, _media))
    app.on_shutdown.append(_stop_taking_work)
    app.on_startup.append(_settled)  # after cleanup_ctx's start-up, which runs first
    return app


def _build_workers(
    app: web.Application, state: AppState, *, sim: SimCarrier, twilio: TwilioCarrier
) -> None:
    settings, db = state.settings, state.db
    node_id = settings.effective_node_id()
    NODE.info({"node_id": node_id})
    app[DIALLER] = Dialler(
        db,
        AccountCarriers(db, state.secret_box, state.carriers),
        node_id=node_id,
        signing_key=state.signing_key,
        public_url=settings.effective_public_url(),
        ring_timeout=settings.outbound_ring_timeout_seconds,
    )
    app[DELIVERY] = DeliveryWorker(db, settings, node_id=node_id)
    app[DIAL_QUEUE] = DialQueue(
        db,
        app[DIALLER].dial,
        app[DIALLER].dialling,
        node_id=node_id,
        node_timeout=settings.node_timeout_seconds,
        interval=settings.dial_queue_interval_seconds,
        dial_rate=settings.dial_rate_per_second,
    )
    app[DIALLER].on_end = app[DIAL_QUEUE].settle_call
    app[RECOVERY] = Recovery(
        db,
        node_id,
        settings.node_timeout_seconds,
        app[DIAL_QUEUE].take_in,
        take_over=(
            lambda dead: _deliveries_of(app, dead),
            lambda dead: release_analyses(db, dead),
            lambda dead: app[SMS].take_over(dead),
            lambda dead: abandon_recordings(db, settings, dead),
        ),
    )
    app[COMMANDS] = CommandBus(db, node_id, lambda kind, call_id: _command(app, kind, call_id))
    # It closes their clients.
    telnyx = TelnyxCarriers(
        db,
        state.secret_box,
        public_url=settings.effective_public_url(),
        api_base_url=settings.telnyx_api_base_url,
    )
    app[SMS] = SmsService(
        settings, db, sim=sim, twilio=twilio, secret_box=state.secret_box, telnyx=telnyx
    )
    app[INTELLIGENCE] = IntelligenceWorker(db, settings, lambda: hosted_backend(settings))
    app[RECORDINGS] = RecordingWorker(db, settings)
    app[MEDIA] = MediaRuntime(
        db=db,
        node_id=node_id,
        settings=settings,
        signing_key=state.signing_key,
        engine_factory=lambda: _voice_engine(settings),
    )


async def _deliveries_of(app: web.Application, dead: str) -> int:
    """The webhook deliveries a dead node had in flight: due again, and looked for now."""
    released = await events.release_leases(app[APP_STATE].db, dead)
    if released:
        app[DELIVERY].wake(claim=True)
    return released


async def _command(app: web.Application, kind: str, call_id: str) -> None:
    """What another node asked of a call this one runs (see relay.calls.commands)."""
    if kind == END:
        live = app[MEDIA].live.get(call_id)
        if live is not None:
            await live.handle.end("completed")
        else:
            await app[DIALLER].cancel(call_id, "canceled")
    elif kind == VOICEMAIL:
        await voicemail.carry_out(app[APP_STATE].db, app[MEDIA].live, call_id)


def _voice_engine(settings: Settings) -> VoiceEngine:
    # Imported on first use: the engine pulls in livekit and the speech runtimes (seconds).
    # livekit plugins must register on the main thread, and warm() loads the VAD in a
    # worker thread: import the plugin here first.
    import livekit.plugins.silero  # noqa: F401

    from relay.engine import VoiceEngine as Engine  # the same: seconds of imports

    return Engine(settings)


async def _schema(app: web.Application) -> AsyncIterator[None]:
    state = app[APP_STATE]
    if state.settings.auto_migrate:
        await state.db.migrate()
    # Refuse to start on credentials the configured key cannot open (or with no key at all).
    await check_stored_credentials(state.db, state.secret_box)
    yield
    await state.db.detach()
    log.info("relay_stopped")


async def _node(app: web.Application) -> AsyncIterator[None]:
    """Deliver webhooks, recover what a dead node left, dial; on the way out, stop dialling,
    deliver what is ready, stop."""
    await app[RECOVERY].start(app[DELIVERY].start)
    app[DIAL_QUEUE].start()
    db = app[APP_STATE].db
    if not db.is_sqlite:  # one SQLite process holds every call: nobody to hear from
        app[COMMANDS].start()
    log.info("relay_started", database=db.engine.url.render_as_string(hide_password=True))
    yield
    await app[DIAL_QUEUE].stop()
    await app[COMMANDS].stop()
    await app[DIALLER].stop()
    await app[RECOVERY].stop()
    await app[DELIVERY].stop()


async def _sms(app: web.Application) -> AsyncIterator[None]:
    await app[SMS].start()
    yield
    await app[SMS].close()


async def _post_call(app: web.Application) -> AsyncIterator[None]:
    app[INTELLIGENCE].start()
    yield


async def _recordings(app: web.Application) -> AsyncIterator[None]:
    app[RECORDINGS].start()
    yield


async def _media(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[MEDIA].close()


async def drain(app: web.Application) -> None:
    """The server stopped listening: start no more dials, and give live calls up to
    RELAY_DRAIN_SECONDS to finish before shutdown ends them. ``relay serve`` runs it
    between the two (see relay.serve)."""
    app[RECOVERY].stop_dialling()
    await app[MEDIA].drain(app[APP_STATE].settings.drain_seconds)


async def _stop_taking_work(app: web.Application) -> None:
    # Live calls end first: their media sockets are requests the server waits for.
    app[RECOVERY].stop_dialling()
    await app[MEDIA].shutdown()
    await app[SMS].stop()
    await app[INTELLIGENCE].stop()
    await app[RECORDINGS].stop()


async def _settled(app: web.Application) -> None:
    # What start-up made (the app, its routes and schemas, SQLAlchemy's mappers and compiled
    # statements) lives as long as the process; frozen, full garbage collections skip it.
    gc.collect()
    gc.freeze()
