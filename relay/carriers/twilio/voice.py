"""Twilio's voice webhooks: who may call them, and the TwiML that answers.

``POST /carriers/twilio/voice``          a call came in: ``<Connect><Stream>`` to the relay's
                                         Media Streams socket, or a polite ``<Say>`` + hangup
``POST /carriers/twilio/voice/after``    the stream ended: ``<Dial>`` if the agent asked for a
                                         transfer, else hang up

Every request must carry a valid ``X-Twilio-Signature`` over ``RELAY_PUBLIC_URL`` + path
(HMAC-SHA1 with ``RELAY_TWILIO_AUTH_TOKEN``; or, for Twilio's shared-key signing, the
algorithm named in ``X-Twilio-Webhooks-Signature-Settings`` with
``RELAY_TWILIO_WEBHOOK_SIGNING_KEY``). Anything else is answered 403 before it touches a call.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import select
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.twiml.voice_response import Connect, VoiceResponse

from relay.calls import inbound
from relay.calls.media import MEDIA
from relay.config import Settings
from relay.errors import Forbidden
from relay.logs import get_logger
from relay.state import APP_STATE
from relay.store.models import CallEvent
from relay.urls import media_base_url

log = get_logger("relay.carriers.twilio")

NOT_IN_SERVICE = "Sorry, the number you have called is not in service. Goodbye."
UNAVAILABLE = "Sorry, no one is available to take your call right now. Please try again later."
BAD_SIGNATURE = "The X-Twilio-Signature header does not match this request."
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
AFTER_PATH = "/carriers/twilio/voice/after"


def signature_is_valid(
    settings: Settings, url: str, params: Mapping[str, str], headers: Mapping[str, str]
) -> bool:
    """Whether Twilio signed this request, for the URL Twilio requested."""
    signature = headers.get("X-Twilio-Signature")
    if not signature:
        return False
    signing_settings = headers.get(SETTINGS_HEADER)
    if signing_settings:
        secret = settings.twilio_webhook_signing_key
        algorithm = get_signature_algorithm(signing_settings)
    else:
        secret, algorithm = settings.twilio_auth_token, None
    if not secret:
        log.warning("twilio_secret_not_configured", shared_key=bool(signing_settings))
        return False
    return bool(RequestValidator(secret).validate(url, dict(params), signature, algorithm))


def answer_twiml(stream_url: str, token: str, call_id: str, action_url: str) -> str:
    """Connect the call to the relay's media socket. The token rides both in the URL and as
    a ``<Parameter>``, because Twilio may strip query strings from stream URLs."""
    response = VoiceResponse()
    connect = Connect(action=action_url)
    stream = connect.stream(url=f"{stream_url}?token={quote(token)}")
    stream.parameter(name="callId", value=call_id)
    stream.parameter(name="token", value=token)
    response.append(connect)
    return str(response)


def reject_twiml(message: str) -> str:
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)


def _twiml(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/xml")


async def _signed_params(request: web.Request) -> dict[str, str]:
    settings = request.app[APP_STATE].settings
    params = {k: str(v) for k, v in (await request.post()).items()}
    url = settings.effective_public_url() + request.path_qs
    if not signature_is_valid(settings, url, params, request.headers):
        log.warning("twilio_signature_rejected", path=request.path)
        raise Forbidden(BAD_SIGNATURE, code="invalid_signature")
    return params


async def voice_webhook(request: web.Request) -> web.Response:
    """A call to one of our numbers: connect it to its agent."""
    params = await _signed_params(request)
    state = request.app[APP_STATE]
    to = params.get("To", "")
    try:
        opened = await inbound.open_inbound_call(
            state,
            to_number=to,
            from_number=params.get("From") or None,
            connection_type="twilio",
            carrier_call_id=params.get("CallSid") or None,
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


async def after_stream(request: web.Request) -> web.Response:
    """The media stream ended: carry out a transfer the agent asked for, else hang up."""
    await _signed_params(request)
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
    response = VoiceResponse()
    to = (event.data or {}).get("transfer") if event is not None else None
    if to:
        response.dial(to)
    else:
        response.hangup()
    return _twiml(str(response))
