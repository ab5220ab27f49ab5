"""Telnyx's webhooks: calls and texts to our numbers, what became of our calls and texts.

``POST /carriers/telnyx/call``         Call Control events of the accounts' applications:
                                       ``call.initiated`` (incoming) is answered with a media
                                       stream to ``/media/telnyx``; an outbound call's
                                       ``call.hangup`` before it was answered ends its dialling
``POST /carriers/telnyx/message?connection=<application id>``
                                       ``message.received`` (a text to one of our numbers)
                                       and ``message.sent`` / ``message.finalized`` (delivery)

Every request must carry a valid ``telnyx-signature-ed25519`` (:mod:`relay.carriers.telnyx
.signature`) made with the key of an account on the application it names (the payload's
``connection_id`` for calls, the URL's ``connection`` for texts): 403 otherwise, before it
touches a call or the store. The call or text then reaches only a number imported under that
application: routing is by (``telnyx:<connection id>``, number).
"""

from __future__ import annotations

import json

from aiohttp import web
from sqlalchemy import select

from relay.api.limits import refuse_bad_text
from relay.calls import inbound, voicemail
from relay.calls.media import MEDIA
from relay.calls.outbound import DIALLER
from relay.carriers import CarrierError, InboundWebhook, LegUpdate, MachineVerdict
from relay.carriers.telnyx import BAD_SIGNATURE, CALL_PATH, MESSAGE_PATH, TelnyxCarrier
from relay.carriers.telnyx import events as te
from relay.errors import BadRequest, Forbidden
from relay.logs import get_logger
from relay.state import APP_STATE
from relay.store.models import Call, Number
from relay.transports.control import CallControl
from relay.urls import media_base_url
from relay_numbers.keys import telnyx_key
from relay_numbers.telnyx_accounts import TelnyxCarriers
from sms.inbound import receive
from sms.outbound import set_status
from sms.service import SMS
from sms.store import message_of, messages

log = get_logger("relay.api.carriers.telnyx")

TELNYX: web.AppKey[TelnyxCarriers] = web.AppKey("relay_telnyx", TelnyxCarriers)
NOT_JSON = "Not a Telnyx webhook: {why}."


def _named_connection(body: bytes) -> str:
    """The application a call event names, read before its signature is checked: only to
    know whose key to check it with."""
    try:
        doc = json.loads(body)
        value = doc["data"]["payload"]["connection_id"]
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError):
        return ""
    return value if isinstance(value, str) else ""


async def signed(request: web.Request, connection_id: str) -> tuple[te.Webhook, TelnyxCarrier]:
    """The webhook, once a key of an account on ``connection_id`` checks its signature (403
    otherwise), and that account's carrier."""
    body = await request.read()
    state = request.app[APP_STATE]
    webhook = InboundWebhook(
        state.settings.effective_public_url() + request.path_qs, request.headers, body
    )
    for carrier in await request.app[TELNYX].for_connection(connection_id):
        if carrier.verify_webhook(webhook):
            break
    else:
        log.warning("telnyx_signature_rejected", path=request.path, connection=connection_id)
        raise Forbidden(BAD_SIGNATURE, code="invalid_signature")
    try:
        hook = te.parse(body)
    except te.WebhookInvalid as exc:
        raise BadRequest(NOT_JSON.format(why=exc)) from None
    for name, value in hook.payload.items():
        if isinstance(value, str):
            refuse_bad_text(name, value)  # signed is not sane: PostgreSQL refuses a NUL
    return hook, carrier


async def call_webhook(request: web.Request) -> web.Response:
    hook, carrier = await signed(request, _named_connection(await request.read()))
    try:
        event = te.call_event(hook)
    except te.WebhookInvalid as exc:
        raise BadRequest(NOT_JSON.format(why=exc)) from None
    if hook.event_type == "call.initiated" and event.direction == "incoming":
        await _answer(request, carrier, event)
    elif hook.event_type == "call.hangup" and event.direction == "outgoing" and event.client_state:
        await _leg_ended(request, event)
    elif (verdict := te.machine_verdict(hook)) is not None and event.client_state:
        await _machine(request, event, verdict)
    return web.json_response({})


async def _machine(request: web.Request, event: te.CallEvent, verdict: MachineVerdict) -> None:
    """Answering-machine detection on an outbound call. The signer's call only: any account
    can sign a ``client_state`` naming any call id, not the call's ``call_control_id``."""
    state = request.app[APP_STATE]
    call_id = event.client_state or ""
    async with state.db.session() as session:
        call = await session.get(Call, call_id)
        ours = call is not None and call.carrier_call_id == event.call_control_id
    if not ours:
        log.info("telnyx_amd_ignored", call_id=call_id[:60])
        return
    node_id = state.settings.effective_node_id()
    await voicemail.report(state.db, request.app[MEDIA].live, node_id, call_id, verdict)


async def _answer(request: web.Request, carrier: TelnyxCarrier, event: te.CallEvent) -> None:
    """A call to one of our numbers: answer it with a stream to its agent, or hang up."""
    state = request.app[APP_STATE]
    try:
        opened = await inbound.open_inbound_call(
            state,
            to_number=event.to_number,
            from_number=event.from_number or None,
            connection_type="telnyx",
            carrier_call_id=event.call_control_id,
            carrier_keys=(telnyx_key(event.connection_id),),
        )
    except inbound.CallUnavailable as exc:
        log.info("telnyx_call_rejected", to=event.to_number, code=exc.code)
        try:
            await carrier.hangup(event.call_control_id)
        except CarrierError as err:
            log.warning("telnyx_reject_failed", code=err.code)
        return
    request.app[MEDIA].expect(opened.call_id)
    base = media_base_url(state.settings.effective_public_url())
    try:
        await carrier.answer(event.call_control_id, base, opened.media_token, opened.call_id)
    except CarrierError as exc:  # the call fails network_timeout when no media comes
        log.warning("telnyx_answer_failed", call_id=opened.call_id, code=exc.code)


async def _leg_ended(request: web.Request, event: te.CallEvent) -> None:
    """An outbound leg hung up. Before it was answered, that ends its dialling; after, its
    media socket's stop already ended the call."""
    call_id = event.client_state or ""
    reason = te.HANGUP_REASONS.get(event.hangup_cause or "", "provider_error")
    log.info("telnyx_leg_ended", call_id=call_id, cause=event.hangup_cause, reason=reason)
    detail = f"Telnyx ended the call: {event.hangup_cause or 'unknown cause'}."
    update = LegUpdate(event.call_control_id, "ended", reason, detail)
    await request.app[DIALLER].report(call_id, update)


async def message_webhook(request: web.Request) -> web.Response:
    connection_id = request.query.get("connection", "")
    hook, _ = await signed(request, connection_id)
    keys = (telnyx_key(connection_id),)
    try:
        if hook.event_type == "message.received":
            await receive(request.app[SMS], te.incoming_text(hook), carrier_keys=keys)
        elif hook.event_type in ("message.sent", "message.finalized"):
            await _delivery(request, te.status_report(hook), keys)
    except te.WebhookInvalid as exc:
        raise BadRequest(NOT_JSON.format(why=exc)) from None
    return web.json_response({})


async def _delivery(request: web.Request, report: te.StatusReport, keys: tuple[str, ...]) -> None:
    """A delivery report: one of the account's texts moves on to its new status."""
    svc = request.app[SMS]
    lookup = select(*messages.c).where(
        messages.c.carrier_key.in_(keys), messages.c.carrier_message_id == report.carrier_message_id
    )
    async with svc.writing() as session:
        row = (await session.execute(lookup)).mappings().one_or_none()
        if row is None or report.status is None:
            log.info("telnyx_status_ignored", known=row is not None)
            return
        values: dict[str, str] = {}
        if report.status == "failed" and report.error_code:
            values["error_code"] = f"telnyx_{report.error_code}"
            values["error_message"] = (
                f"Telnyx reported error {report.error_code} delivering the text."
            )
        await set_status(session, message_of(row), report.status, **values)


async def control_for(app: web.Application, call: Call) -> CallControl | None:
    """How a Telnyx call of one of our numbers is hung up or transferred at Telnyx (closing
    its media socket does not end it). A BYOT call's Telnyx call is its developer's."""
    if call.number_id is None:
        return None
    async with app[APP_STATE].db.session() as session:
        number = await session.get(Number, call.number_id)
    if number is None or number.provider != "telnyx":
        return None
    return await app[TELNYX].for_key(number.carrier_key)


def install(app: web.Application, carriers: TelnyxCarriers) -> None:
    app[TELNYX] = carriers
    app.router.add_post(CALL_PATH, call_webhook)
    app.router.add_post(MESSAGE_PATH, message_webhook)


__all__ = ["TELNYX", "control_for", "install", "signed"]
