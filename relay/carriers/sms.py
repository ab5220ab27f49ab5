"""Texts through carriers: what :meth:`relay.carriers.Carrier.send_sms` carries both ways.

A carrier's ``send_sms`` hands one text to the carrier and says what the carrier made of it.
Errors are the carriers' own tree (:mod:`relay.carriers`):

    CarrierError                 the carrier refused the text (``code`` says why)
    └── CarrierUnavailable       the carrier could not be reached
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DeliveryStatus = Literal["queued", "sent", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class OutgoingText:
    message_id: str
    from_number: str
    to_number: str
    text: str
    status_callback_url: str | None = None


@dataclass(frozen=True, slots=True)
class SentText:
    """The carrier's id for the text and how far it got while we waited."""

    carrier_message_id: str
    status: DeliveryStatus
    error_code: str | None = None


@dataclass(frozen=True, slots=True)
class IncomingText:
    """A text a carrier delivered to one of our numbers. ``keyword_handled``: the carrier
    itself already answered an opt-out keyword (Twilio's Advanced Opt-Out does)."""

    provider: str
    carrier_message_id: str
    from_number: str
    to_number: str
    text: str
    media: tuple[dict[str, str], ...] = field(default=())
    keyword_handled: bool = False


__all__ = ["DeliveryStatus", "IncomingText", "OutgoingText", "SentText"]
