"""Twilio Messaging webhooks.

``POST /carriers/twilio/sms``          a text came in: stored, answered with empty TwiML at
                                       once (``<Response/>``); the agent's reply goes out
                                       later through the REST API, not in the TwiML
``POST /carriers/twilio/sms/status``   a delivery report for one of our texts

Both must carry a valid ``X-Twilio-Signature`` over ``RELAY_PUBLIC_URL`` + path and query;
anything else is answered 403 before it touches the store.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from relay.carriers.twilio.sms import EMPTY_TWIML, parse_inbound, parse_status
from relay.carriers.twilio.voice import BAD_SIGNATURE, signature_is_valid
from relay.errors import BadRequest, Forbidden
from relay.logs import get_logger
from sms.inbound import receive
from sms.outbound import set_status
from sms.service import SMS, STATUS_CALLBACK_PATH
from sms.store import message_of, messages

log = get_logger("sms.twilio")
INBOUND_PATH = "/carriers/twilio/sms"


async def _signed_form(request: web.Request) -> dict[str, str]:
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    settings = request.app[SMS].settings
    url = settings.effective_public_url() + request.path_qs
    if not signature_is_valid(settings, url, fields, request.headers):
        log.warning("twilio_bad_signature", path=request.path)
        raise Forbidden(BAD_SIGNATURE, code="invalid_signature")
    return fields


async def inbound(request: web.Request) -> web.Response:
    form = await _signed_form(request)
    try:
        incoming = parse_inbound(form)
    except ValueError as exc:
        raise BadRequest(f"Not a Twilio message webhook: {exc}.") from exc
    await receive(request.app[SMS], incoming)
    return web.Response(text=EMPTY_TWIML, content_type="text/xml")


async def status(request: web.Request) -> web.Response:
    form = await _signed_form(request)
    sid, new_status, error = parse_status(form)
    svc = request.app[SMS]
    message_id = request.query.get("messageId")
    lookup = select(*messages.c).where(messages.c.provider == "twilio")
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


def install(app: web.Application) -> None:
    app.router.add_post(INBOUND_PATH, inbound)
    app.router.add_post(STATUS_CALLBACK_PATH, status)
