"""Texts on the sim carrier: nothing leaves the process. What the relay sends lands in an
outbox (the simulated handsets' inbox), delivered at once; ``relay phone sms`` prints it."""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from relay.carriers.sms import OutgoingText, SentText
from relay.store.models import utcnow

# The simulated handset's number when none is given (NANPA's fictional 555-01xx block).
DEFAULT_HANDSET = "+12025550142"


@dataclass(frozen=True, slots=True)
class SimText:
    carrier_message_id: str
    message_id: str
    from_number: str
    to_number: str
    text: str
    at: datetime


class SimSms:
    """``outbox`` keeps the last ``keep`` texts, oldest first."""

    name = "sim"

    def __init__(self, keep: int = 10_000) -> None:
        self.outbox: deque[SimText] = deque(maxlen=keep)

    async def send_sms(self, text: OutgoingText) -> SentText:
        sid = "SIM" + secrets.token_hex(16)
        self.outbox.append(
            SimText(sid, text.message_id, text.from_number, text.to_number, text.text, utcnow())
        )
        return SentText(sid, "delivered")

    def inbox(self, handset: str) -> list[SimText]:
        """What the relay texted to ``handset``."""
        return [t for t in self.outbox if t.to_number == handset]
