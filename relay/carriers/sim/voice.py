"""The sim carrier's inbound voice webhook: ``POST /carriers/sim/voice``.

It stands where Twilio's voice webhook stands, answers JSON instead of TwiML, and hands
back the same Media Streams socket a Twilio call gets. The simulated handset
(:mod:`relay.carriers.sim.handset`, ``relay phone call``) then speaks the carrier side of
the Twilio Media Streams protocol over it.

Who may call it: the route exists only while ``RELAY_SIM_ENABLED`` is on (the default, for
the embedded setup; turn it off in production), and each request needs a secret API key of
the project that owns the called number. A sim call therefore reaches only agents its
caller could already reach through the API.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field, ValidationError

from relay.api.routing import read_json, validation_error
from relay.api.schema import APIModel
from relay.auth import authenticate
from relay.calls import inbound
from relay.calls.media import MEDIA
from relay.errors import Conflict, NotFound
from relay.state import APP_STATE
from relay.urls import media_base_url

PATH = "/carriers/sim/voice"
PROTOCOL = "twilio-media-streams"


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
