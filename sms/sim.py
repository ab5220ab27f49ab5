"""``POST /carriers/sim/sms``: a simulated handset texts one of the project's sim numbers.

The text goes the same way a carrier's would (stored, then answered by the conversation's
worker); replies land in the sim carrier's outbox. With ``waitSeconds`` the answer carries
the replies once they are handed to the carrier: ``relay phone sms`` uses that.
It needs a secret key: a sim number answers only its own project.
"""

from __future__ import annotations

import asyncio
import functools

from pydantic import Field

from relay.api.routing import Context, Router
from relay.api.schema import APIModel, OutModel
from relay.carriers.sim.sms import DEFAULT_HANDSET
from relay.carriers.sms import IncomingText
from relay.errors import NotFound, ServiceUnavailable, invalid_field
from relay.ids import random_hex
from relay.phone import to_e164
from relay_numbers.routing import number_for_inbound
from sms.api import MessageOut, message_out
from sms.inbound import receive
from sms.service import SMS

router = Router()
TAG = "Sim carrier"
SIM_OFF = "The sim carrier is switched off (RELAY_SIM_ENABLED=0)."
OVERLOADED = (
    "The relay is answering texts as fast as it can and takes no more for now; retry shortly."
)
NOT_SIM = "This number is on {provider!r}, not the sim carrier; text it through that carrier."
# Handsets text again and again: parsing a phone number is a tenth of a millisecond.
_e164 = functools.lru_cache(maxsize=4096)(to_e164)


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
    number = await number_for_inbound(ctx.state.db, to)
    if number is None or number.project_id != ctx.project_id:
        raise NotFound(f"No number {to} in this project.", field="to")
    if number.provider != "sim":
        raise invalid_field("to", NOT_SIM.format(provider=number.provider), "not_a_sim_number")
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
