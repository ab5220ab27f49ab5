"""Plivo's webhooks: calls and texts to our numbers, and what became of them.

``POST /carriers/plivo/voice``          a call came in: a bidirectional ``<Stream>`` to the
                                        relay's Plivo socket, or a polite ``<Speak>`` + hangup
``POST /carriers/plivo/voice/after``    the stream ended: ``<Dial>`` if the agent asked for a
                                        transfer, else hang up
``POST /carriers/plivo/voice/outbound`` a call the relay placed was answered: the same
                                        ``<Stream>``, with the token the dialler gave it
``POST /carriers/plivo/voice/status``   ring and hang-up callbacks of a call the relay placed
``POST /carriers/plivo/sms``            a text came in: stored, answered 200 at once; the
                                        agent's reply goes out later through ``Message/``
``POST /carriers/plivo/sms/status``     a delivery report for one of our texts

Each URL the relay gives Plivo carries ``?authId=`` (the Plivo account); every request must
carry a valid V3 signature (:mod:`relay.carriers.plivo.signature`) over ``RELAY_PUBLIC_URL``
+ path and query, made with the auth token of a carrier account with that auth id. Anything
else is answered 403 before it touches a call or the store. The call or text then reaches
only a number imported under that account: routing is by (auth id, To).
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from relay import tokens
from relay.api.limits import refuse_bad_text
from relay.calls import inbound, voicemail
from relay.calls.inbound import carrier_of_call
from relay.calls.media import MEDIA
from relay.calls.outbound import DIALLER
from relay.carriers.plivo import (
    AMD_PATH,
    BAD_SIGNATURE,
    CALL_STATUS_PATH,
    NOT_IN_SERVICE,
    OUTBOUND_ANSWER_PATH,
    SMS_PATH,
    UNAVAILABLE,
    VOICE_PATH,
    PlivoCarrier,
    after_stream_xml,
    answer_xml,
    e164_of,
    parse_call_status,
    parse_inbound,
    parse_machine,
    parse_status,
    reject_xml,
    signature_is_valid,
)
from relay.errors import BadRequest, Forbidden
from relay.logs import get_logger
from relay.state import APP_STATE
from relay.store.models import Call, CallEvent, Number
from relay.transports.control import CallControl
from relay.urls import media_base_url
from relay_numbers import plivo_key
from relay_numbers.accounts import plivo_accounts
from sms.inbound import receive
from sms.outbound import set_status
from sms.service import PLIVO_STATUS_PATH, SMS
from sms.store import message_of, messages

log = get_logger("relay.api.carriers.plivo")

AFTER_PATH = "/carriers/plivo/voice/after"


def _xml(body: str) -> web.Response:
    return web.Response(text=body, content_type="application/xml")


async def signed_form(request: web.Request) -> tuple[dict[str, str], str]:
    """The form Plivo posted, once its V3 signature checks out with the token of an account
    with the URL's ``authId`` (403 otherwise), and that account's carrier key."""
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    state = request.app[APP_STATE]
    url = state.settings.effective_public_url() + request.path_qs
    auth_id = request.query.get("authId", "")
    signed = False
    for creds in await plivo_accounts(state.db, state.secret_box, auth_id):
        if signature_is_valid(
            request.method, url, fields, request.headers, auth_token=creds.auth_token
        ):
            signed = True
            break
    if not signed:
        log.warning("plivo_signature_rejected", path=request.path, auth_id=auth_id[:40])
        raise Forbidden(BAD_SIGNATURE, code="invalid_signature")
    for name, value in (*fields.items(), *request.query.items()):
        refuse_bad_text(name, value)  # signed is not sane: PostgreSQL refuses a NUL
    return fields, plivo_key(auth_id)


async def voice_webhook(request: web.Request) -> web.Response:
    """A call to one of our numbers: connect it to its agent."""
    params, key = await signed_form(request)
    state = request.app[APP_STATE]
    to = e164_of(params.get("To", ""))
    try:
        opened = await inbound.open_inbound_call(
            state,
            to_number=to,
            from_number=e164_of(params["From"]) if params.get("From") else None,
            connection_type="plivo",
            carrier_call_id=params.get("CallUUID") or None,
            carrier_keys=(key,),
        )
    except inbound.CallUnavailable as exc:
        log.info("plivo_call_rejected", to=to, code=exc.code)
        return _xml(reject_xml(NOT_IN_SERVICE if exc.code == "unknown_number" else UNAVAILABLE))
    request.app[MEDIA].expect(opened.call_id)
    public = state.settings.effective_public_url()
    auth_id = request.query["authId"]
    return _xml(
        answer_xml(
            f"{media_base_url(public)}/media/plivo",
            opened.media_token,
            opened.call_id,
            f"{public}{AFTER_PATH}?authId={auth_id}&callId={opened.call_id}",
        )
    )


async def _placed_by(request: web.Request, call_id: str, key: str) -> Call | None:
    """The outbound call ``call_id`` if it was placed from a number of the account that
    signed (its carrier key), else None."""
    async with request.app[APP_STATE].db.session() as session:
        row = (
            await session.execute(
                select(Call, Number.carrier_key)
                .join(Number, Call.number_id == Number.id)
                .where(Call.id == call_id, Call.direction == "outbound")
            )
        ).first()
    if row is None or row[1] != key:
        return None
    call: Call = row[0]
    return call


async def outbound_answered(request: web.Request) -> web.Response:
    """The callee of a call the relay placed answered: stream it to the relay."""
    _, key = await signed_form(request)
    call_id, token = request.query.get("callId", ""), request.query.get("token", "")
    state = request.app[APP_STATE]
    try:
        named = tokens.verify(state.signing_key, token, inbound.MEDIA_TOKEN_PURPOSE)
    except tokens.TokenError:
        named = None
    call = await _placed_by(request, call_id, key) if named == call_id else None
    if call is None or call.status not in inbound.AWAITING_MEDIA:
        log.info("plivo_outbound_answer_refused", call_id=call_id[:60])
        return _xml(reject_xml(UNAVAILABLE))
    public = state.settings.effective_public_url()
    return _xml(
        answer_xml(
            f"{media_base_url(public)}/media/plivo",
            token,
            call_id,
            f"{public}{AFTER_PATH}?authId={request.query['authId']}&callId={call_id}",
        )
    )


async def call_status(request: web.Request) -> web.Response:
    """Ring and hang-up callbacks of a call the relay placed."""
    form, key = await signed_form(request)
    update = parse_call_status(form)
    call_id = request.query.get("callId", "")
    if update is None or not call_id or await _placed_by(request, call_id, key) is None:
        log.info("plivo_call_status_ignored", call_id=call_id[:60], status=form.get("CallStatus"))
        return web.Response(status=204)
    await request.app[DIALLER].report(call_id, update)
    return web.Response(status=204)


async def machine_detection(request: web.Request) -> web.Response:
    """Plivo's asynchronous answering-machine verdict on a call the relay placed (from a
    number of the account that signed)."""
    form, key = await signed_form(request)
    verdict = parse_machine(form)
    call_id = request.query.get("callId", "")
    if verdict is None or await _placed_by(request, call_id, key) is None:
        log.info("plivo_amd_ignored", call_id=call_id[:60])
        return web.Response(status=204)
    state = request.app[APP_STATE]
    node_id = state.settings.effective_node_id()
    await voicemail.report(state.db, request.app[MEDIA].live, node_id, call_id, verdict)
    return web.Response(status=204)


async def after_stream(request: web.Request) -> web.Response:
    """The stream ended: carry out a transfer the agent asked for, else hang up."""
    await signed_form(request)  # the call id rides in the signed URL
    call_id = request.query.get("callId", "")
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
    return _xml(after_stream_xml(to))


async def sms_inbound(request: web.Request) -> web.Response:
    """A text to one of our numbers: stored and handed to its conversation's worker."""
    form, key = await signed_form(request)
    try:
        incoming = parse_inbound(form)
    except ValueError as exc:
        raise BadRequest(f"Not a Plivo message webhook: {exc}.") from exc
    await receive(request.app[SMS], incoming, carrier_keys=(key,))
    return web.Response(status=200)


async def sms_status(request: web.Request) -> web.Response:
    """A delivery report: the text moves on to its new status."""
    form, key = await signed_form(request)
    uuid, new_status, error = parse_status(form)
    svc = request.app[SMS]
    message_id = request.query.get("messageId")
    # Only a text of the account that signed: its message ids are its own.
    lookup = select(*messages.c).where(messages.c.carrier_key == key)
    lookup = lookup.where(
        messages.c.id == message_id if message_id else messages.c.carrier_message_id == uuid
    )
    async with svc.writing() as session:
        row = (await session.execute(lookup)).mappings().one_or_none()
        if row is None or new_status is None:
            log.info("plivo_status_ignored", uuid=uuid[:64], known=row is not None)
            return web.Response(status=204)
        msg = message_of(row)
        values: dict[str, str] = {}
        if uuid and msg.carrier_message_id is None:
            values["carrier_message_id"] = uuid
        if new_status == "failed" and error:
            values["error_code"] = f"plivo_{error}"[:60]
            values["error_message"] = f"Plivo reported error {error} delivering the text."
        await set_status(session, msg, new_status, **values)
    return web.Response(status=204)


class _PlivoControl:
    """A live Plivo call's hang-up, transfer (to the relay's own ``<Dial>`` document, the
    after-stream one, which reads the transfer the line noted) and digits."""

    def __init__(self, carrier: PlivoCarrier, after_url: str) -> None:
        self._carrier = carrier
        self._after_url = after_url

    async def hangup(self, carrier_call_id: str) -> None:
        await self._carrier.hangup(carrier_call_id)

    async def transfer(self, carrier_call_id: str, to: str) -> None:
        await self._carrier.redirect(carrier_call_id, self._after_url)

    async def send_digits(self, carrier_call_id: str, digits: str) -> None:
        await self._carrier.send_digits(carrier_call_id, digits)


async def control_for(app: web.Application, call_id: str) -> CallControl | None:
    """The Plivo Call API of a live call of one of our Plivo numbers (its account's)."""
    db, carriers = app[APP_STATE].db, app[DIALLER].carriers
    carrier = await carrier_of_call(db, carriers, call_id, "plivo")
    if not isinstance(carrier, PlivoCarrier):
        return None
    public = app[APP_STATE].settings.effective_public_url()
    auth_id = carrier.creds.auth_id
    return _PlivoControl(carrier, f"{public}{AFTER_PATH}?authId={auth_id}&callId={call_id}")


def install(app: web.Application) -> None:
    """Serve Plivo's webhooks (signed by whichever project's account the URL names)."""
    app.router.add_post(VOICE_PATH, voice_webhook)
    app.router.add_post(AFTER_PATH, after_stream)
    app.router.add_post(OUTBOUND_ANSWER_PATH, outbound_answered)
    app.router.add_post(CALL_STATUS_PATH, call_status)
    app.router.add_post(AMD_PATH, machine_detection)
    app.router.add_post(SMS_PATH, sms_inbound)
    app.router.add_post(PLIVO_STATUS_PATH, sms_status)


__all__ = ["AFTER_PATH", "SMS_PATH", "VOICE_PATH", "control_for", "install", "signed_form"]
