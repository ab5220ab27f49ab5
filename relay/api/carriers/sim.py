"""The sim carrier's webhooks: a simulated handset calls or texts one of the project's numbers.

``POST /carriers/sim/voice``   place a sim call. It stands where Twilio's voice webhook stands,
                               answers JSON instead of TwiML, and hands back the same Media
                               Streams socket a Twilio call gets; the handset
                               (:mod:`relay.handset`, ``relay phone call``) then speaks the
                               carrier side of the Twilio Media Streams protocol over it.
``POST /carriers/sim/sms``     text a sim number. The text goes the way a carrier's would
                               (stored, then answered by the conversation's worker); replies
                               land in the sim carrier's outbox. With ``waitSeconds`` the answer
                               carries the replies once they are handed to the carrier: ``relay
                               phone sms`` uses that.

Who may call them: the routes answer only while ``RELAY_SIM_ENABLED`` is on (the default, for
the embedded setup; turn it off in production), and each request needs a secret API key of
the project that owns the number. A sim call or text therefore reaches only agents its
caller could already reach through the API.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from aiohttp import web
from pydantic import Field, ValidationError

from relay.api.messages import MessageOut, message_out
from relay.api.routing import Context, Router, read_json, validation_error
from relay.api.schema import APIModel, OutModel
from relay.auth import authenticate
from relay.calls import inbound
from relay.calls.media import MEDIA
from relay.carriers.sim import DEFAULT_HANDSET
from relay.carriers.sms import IncomingText
from relay.errors import Conflict, NotFound, ServiceUnavailable, invalid_field
from relay.ids import random_hex
from relay.phone import to_e164
from relay.state import APP_STATE
from relay.urls import media_base_url
from relay_numbers import number_for_inbound, project_number, sim_key
from sms.inbound import receive
from sms.service import SMS

router = Router()
TAG = "Sim carrier"
VOICE_PATH = "/carriers/sim/voice"
PROTOCOL = "twilio-media-streams"
SIM_OFF = "The sim carrier is switched off (RELAY_SIM_ENABLED=0)."
OVERLOADED = (
    "The relay is answering texts as fast as it can and takes no more for now; retry shortly."
)
NOT_SIM = "This number is on {provider!r}, not the sim carrier; text it through that carrier."
# Handsets text again and again: parsing a phone number is a tenth of a millisecond.
_e164 = functools.lru_cache(maxsize=4096)(to_e164)


class SimVoiceRequest(APIModel):
    to: str = Field(max_length=40, description="The called number, E.164.")
    from_: str | None = Field(default=None, alias="from", max_length=40)


async def voice_webhook(request: web.Request) -> web.Response:
    """Place a sim call to one of the key's project's numbers; answers where to stream."""
    state = request.app[APP_STATE]
    key = await authenticate(request, state, "secret")
    data = await read_json(request)
    try:
        body = SimVoiceRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc
    try:
        opened = await inbound.open_inbound_call(
            state,
            to_number=body.to,
            from_number=body.from_,
            connection_type="sim",
            project_id=key.project_id,
        )
    except inbound.CallUnavailable as exc:
        error = NotFound if exc.code == "unknown_number" else Conflict
        raise error(exc.message, code=exc.code, field="to") from exc
    request.app[MEDIA].expect(opened.call_id)
    media_url = f"{media_base_url(state.settings.effective_public_url())}/media/twilio"
    payload: dict[str, Any] = {
        "callId": opened.call_id,
        "agentId": opened.agent_id,
        "protocol": PROTOCOL,
        "mediaUrl": media_url,
        "token": opened.media_token,
        "streamUrl": f"{media_url}?token={opened.media_token}",
        "expiresInSeconds": inbound.MEDIA_TOKEN_TTL_SECONDS,
    }
    return web.json_response(payload, status=201)


class SimTextIn(APIModel):
    to: str = Field(max_length=40, description="The project's sim number to text.")
    from_: str = Field(
        default=DEFAULT_HANDSET, alias="from", max_length=40, description="The handset's number."
    )
    text: str = Field(min_length=1, max_length=1600)
    carrier_message_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Send the same id twice to play a carrier retrying a delivery.",
    )
    wait_seconds: float = Field(
        default=0, ge=0, le=60, description="Wait this long for the replies."
    )


class SimTextOut(OutModel):
    message_id: str
    conversation_id: str
    duplicate: bool = Field(description="The carrier id was seen before; nothing was done.")
    replies: list[MessageOut]
    timed_out: bool = Field(description="waitSeconds passed before the replies were sent.")


@router.route(
    "POST",
    "/carriers/sim/sms",
    summary="Text a sim number from a simulated handset",
    tag=TAG,
    body=SimTextIn,
    response=SimTextOut,
    errors=(400, 401, 403, 404, 413, 415, 422, 429, 503),
)
async def sim_text(ctx: Context, body: SimTextIn) -> SimTextOut:
    if not ctx.state.settings.sim_enabled:
        raise NotFound(SIM_OFF)
    svc = ctx.request.app[SMS]
    if svc.overloaded:
        raise ServiceUnavailable(OVERLOADED, code="overloaded", headers={"Retry-After": "1"})
    to = _e164(body.to, field="to")
    sender = _e164(body.from_, field="from")
    number = await number_for_inbound(ctx.state.db, to, (sim_key(ctx.project_id),))
    if number is None:
        other = await project_number(ctx.state.db, ctx.project_id, to)
        if other is None:
            raise NotFound(f"No number {to} in this project.", field="to")
        raise invalid_field("to", NOT_SIM.format(provider=other.provider), "not_a_sim_number")
    if sender == to:
        raise invalid_field("from", "from must differ from to.")
    incoming = IncomingText(
        provider="sim",
        carrier_message_id=body.carrier_message_id or "SIM" + random_hex(16),
        from_number=sender,
        to_number=to,
        text=body.text,
    )
    receipt = await receive(svc, incoming, number=number, wait=body.wait_seconds > 0)
    assert receipt.message_id is not None and receipt.conversation_id is not None
    replies = []
    timed_out = False
    if receipt.replies is not None:
        try:
            replies = await asyncio.wait_for(asyncio.shield(receipt.replies), body.wait_seconds)
        except TimeoutError:
            timed_out = True
            svc.forget_replies(receipt.message_id)
    return SimTextOut(
        message_id=receipt.message_id,
        conversation_id=receipt.conversation_id,
        duplicate=receipt.duplicate,
        replies=[message_out(m) for m in replies],
        timed_out=timed_out,
    )


def install(app: web.Application) -> None:
    """Serve the sim voice webhook while the sim carrier is on (its texts go by ``router``)."""
    if app[APP_STATE].settings.sim_enabled:
        app.router.add_post(VOICE_PATH, voice_webhook)


__all__ = ["VOICE_PATH", "install", "router"]
