"""Twilio's webhooks: calls and texts to our numbers, and what became of them.

``POST /carriers/twilio/voice``          a call came in: ``<Connect><Stream>`` to the relay's
                                         Media Streams socket, or a polite ``<Say>`` + hangup
``POST /carriers/twilio/voice/after``    the stream ended: ``<Dial>`` if the agent asked for a
                                         transfer, else hang up
``POST /carriers/twilio/voice/status``   progress of an outbound call the relay placed (busy,
                                         no-answer...), handed to the dialler
``POST /carriers/twilio/sms``            a text came in: stored, answered with empty TwiML at
                                         once (``<Response/>``); the agent's reply goes out
                                         later through the REST API, not in the TwiML
``POST /carriers/twilio/sms/status``     a delivery report for one of our texts

Every request must carry a valid ``X-Twilio-Signature`` over ``RELAY_PUBLIC_URL`` + path and
query (:mod:`relay.carriers.twilio.signature`), made with the auth token of the account its
``AccountSid`` names: a project's carrier account, or the deployment's own account
(``RELAY_TWILIO_*``, also when the form names none). Anything else is answered 403 before it
touches a call or the store. The call or text then reaches only a number imported under that
account: routing is by (AccountSid, To).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from aiohttp import web
from sqlalchemy import select

from relay.api.limits import refuse_bad_text
from relay.calls import inbound, voicemail
from relay.calls.inbound import carrier_of_call
from relay.calls.media import MEDIA
from relay.calls.outbound import DIALLER
from relay.carriers import InboundWebhook
from relay.carriers.twilio import (
    AFTER_PATH,
    AMD_PATH,
    BAD_SIGNATURE,
    EMPTY_TWIML,
    NOT_IN_SERVICE,
    SMS_PATH,
    STATUS_PATH,
    UNAVAILABLE,
    VOICE_PATH,
    TwilioCarrier,
    after_stream_twiml,
    answer_twiml,
    parse_answered_by,
    parse_call_status,
    parse_inbound,
    parse_status,
    reject_twiml,
    signature_is_valid,
)
from relay.errors import BadRequest, Forbidden
from relay.logs import get_logger
from relay.state import APP_STATE
from relay.store.models import Call, CallEvent, Number
from relay.transports.control import CallControl
from relay.urls import media_base_url
from relay_numbers import twilio_keys
from relay_numbers.accounts import twilio_tokens
from sms.inbound import receive
from sms.outbound import set_status
from sms.service import SMS, STATUS_CALLBACK_PATH
from sms.store import message_of, messages

T = TypeVar("T")

log = get_logger("relay.api.carriers.twilio")

# The account whose signature the webhooks must carry.
TWILIO: web.AppKey[TwilioCarrier] = web.AppKey("relay_twilio", TwilioCarrier)


def _twiml(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/xml")


async def signed_form(request: web.Request) -> tuple[dict[str, str], tuple[str, ...]]:
    """The form Twilio posted, once its signature checks out with the token of the account it
    names (403 otherwise), and the carrier keys of that account (what it may reach)."""
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    state = request.app[APP_STATE]
    url = state.settings.effective_public_url() + request.path_qs
    account_sid = fields.get("AccountSid", "")
    deployment_sid = state.settings.twilio_account_sid
    webhook = InboundWebhook(url, request.headers, await request.read(), fields)
    # The deployment's token speaks for the deployment's account only (any, if unnamed).
    by_deployment = account_sid in ("", deployment_sid) or not deployment_sid
    by_deployment = by_deployment and request.app[TWILIO].verify_webhook(webhook)
    signed = by_deployment
    if not signed:
        for token in await twilio_tokens(state.db, state.secret_box, account_sid):
            if signature_is_valid(url, fields, request.headers, auth_token=token, signing_key=""):
                signed = True
                break
    if not signed:
        log.warning("twilio_signature_rejected", path=request.path, account_sid=account_sid)
        raise Forbidden(BAD_SIGNATURE, code="invalid_signature")
    for name, value in (*fields.items(), *request.query.items()):
        refuse_bad_text(name, value)  # signed is not sane: PostgreSQL refuses a NUL
    return fields, twilio_keys(account_sid, deployment=by_deployment)


async def voice_webhook(request: web.Request) -> web.Response:
    """A call to one of our numbers: connect it to its agent."""
    params, keys = await signed_form(request)
    state = request.app[APP_STATE]
    to = params.get("To", "")
    try:
        opened = await inbound.open_inbound_call(
            state,
            to_number=to,
            from_number=params.get("From") or None,
            connection_type="twilio",
            carrier_call_id=params.get("CallSid") or None,
            carrier_keys=keys,
        )
    except inbound.CallUnavailable as exc:
        log.info("twilio_call_rejected", to=to, code=exc.code)
        return _twiml(reject_twiml(NOT_IN_SERVICE if exc.code == "unknown_number" else UNAVAILABLE))
    request.app[MEDIA].expect(opened.call_id)
    public = state.settings.effective_public_url()
    return _twiml(
        answer_twiml(
            f"{media_base_url(public)}/media/twilio",
            opened.media_token,
            opened.call_id,
            f"{public}{AFTER_PATH}?callId={opened.call_id}",
        )
    )


async def _signers_call(request: web.Request, call_id: str, keys: tuple[str, ...]) -> bool:
    """Whether ``call_id`` is a call of a number of the account that signed the request: any
    Twilio account can sign a request naming any call id."""
    async with request.app[APP_STATE].db.session() as session:
        carrier_key = (
            await session.execute(
                select(Number.carrier_key)
                .join(Call, Call.number_id == Number.id)
                .where(Call.id == call_id)
            )
        ).scalar_one_or_none()
    return carrier_key is not None and carrier_key in keys


async def after_stream(request: web.Request) -> web.Response:
    """The media stream ended: carry out a transfer the agent asked for, else hang up."""
    _form, keys = await signed_form(request)  # the call id rides in the signed URL
    call_id = request.query.get("callId", "")
    if not await _signers_call(request, call_id, keys):
        log.info("twilio_after_stream_ignored", call_id=call_id)
        return _twiml(after_stream_twiml(None))
    async with request.app[APP_STATE].db.session() as session:
        event = (
            await session.execute(
                select(CallEvent)
                .where(
                    CallEvent.call_id == call_id,
                    CallEvent.source == "telephony",
                    CallEvent.message == "transfer",
                )
                .order_by(CallEvent.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    to = (event.data or {}).get("transfer") if event is not None else None
    return _twiml(after_stream_twiml(to))


async def voice_status(request: web.Request) -> web.Response:
    """Progress of an outbound call: the dialler learns it rings, or why it ended."""
    got = await _call_callback(request, parse_call_status, "CallStatus")
    if got is not None:
        await request.app[DIALLER].report(*got)
    return web.Response(status=204)


async def machine_detection(request: web.Request) -> web.Response:
    """Twilio's asynchronous answering-machine verdict on an outbound call."""
    got = await _call_callback(request, parse_answered_by, "AnsweredBy")
    if got is not None:
        state = request.app[APP_STATE]
        node_id = state.settings.effective_node_id()
        await voicemail.report(state.db, request.app[MEDIA].live, node_id, *got)
    return web.Response(status=204)


async def _call_callback(
    request: web.Request, parse: Callable[[Mapping[str, str]], T | None], field: str
) -> tuple[str, T] | None:
    """A signed callback about one of our outbound calls (``?callId=``): the call and what
    ``parse`` reads of the form, or None when there is nothing to act on, or the call is not
    one the signing account may reach (logged with the form's ``field``)."""
    form, keys = await signed_form(request)
    value = parse(form)
    call_id = request.query.get("callId", "")
    if value is None or not call_id:
        return None
    if not await _signers_call(request, call_id, keys):
        log.info("twilio_callback_ignored", call_id=call_id, **{field: form.get(field)})
        return None
    return call_id, value


async def sms_inbound(request: web.Request) -> web.Response:
    """A text to one of our numbers: stored and handed to its conversation's worker."""
    form, keys = await signed_form(request)
    try:
        incoming = parse_inbound(form)
    except ValueError as exc:
        raise BadRequest(f"Not a Twilio message webhook: {exc}.") from exc
    await receive(request.app[SMS], incoming, carrier_keys=keys)
    return web.Response(text=EMPTY_TWIML, content_type="text/xml")


async def sms_status(request: web.Request) -> web.Response:
    """A delivery report: the text moves on to its new status."""
    form, keys = await signed_form(request)
    sid, new_status, error = parse_status(form)
    svc = request.app[SMS]
    message_id = request.query.get("messageId")
    # Only a text of the account that signed: its message ids are its own.
    lookup = select(*messages.c).where(messages.c.carrier_key.in_(keys))
    lookup = lookup.where(
        messages.c.id == message_id if message_id else messages.c.carrier_message_id == sid
    )
    async with svc.writing() as session:
        row = (await session.execute(lookup)).mappings().one_or_none()
        if row is None or new_status is None:
            log.info("twilio_status_ignored", sid=sid, known=row is not None)
            return web.Response(status=204)
        msg = message_of(row)
        values: dict[str, str] = {}
        if sid and msg.carrier_message_id is None:
            values["carrier_message_id"] = sid
        if new_status == "failed" and error:
            values["error_code"] = f"twilio_{error}"
            values["error_message"] = f"Twilio reported error {error} delivering the text."
        await set_status(session, msg, new_status, **values)
    return web.Response(status=204)


async def control_for(app: web.Application, call_id: str) -> CallControl | None:
    """How a live call of one of our Twilio numbers is hung up and transferred at Twilio
    (its number's account); None for any other call (a sim call on the same socket)."""
    db, carriers = app[APP_STATE].db, app[DIALLER].carriers
    carrier = await carrier_of_call(db, carriers, call_id, "twilio")
    return carrier if isinstance(carrier, TwilioCarrier) else None


def install(app: web.Application, carrier: TwilioCarrier) -> None:
    """Serve Twilio's webhooks, signed for ``carrier``'s account."""
    app[TWILIO] = carrier
    app.router.add_post(VOICE_PATH, voice_webhook)
    app.router.add_post(AFTER_PATH, after_stream)
    app.router.add_post(STATUS_PATH, voice_status)
    app.router.add_post(AMD_PATH, machine_detection)
    app.router.add_post(SMS_PATH, sms_inbound)
    app.router.add_post(STATUS_CALLBACK_PATH, sms_status)


__all__ = [
    "AFTER_PATH",
    "SMS_PATH",
    "STATUS_PATH",
    "TWILIO",
    "VOICE_PATH",
    "control_for",
    "install",
    "signed_form",
]
