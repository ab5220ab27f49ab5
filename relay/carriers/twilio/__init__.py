"""Twilio: webhook signature checks, the TwiML that answers a call, the Messaging REST client.

Twilio's webhooks are served by :mod:`relay.api.carriers.twilio`; its Media Streams socket
by :mod:`relay.transports.twilio`.
"""

from relay.carriers.twilio.carrier import TwilioCarrier
from relay.carriers.twilio.signature import BAD_SIGNATURE, signature_is_valid
from relay.carriers.twilio.sms import EMPTY_TWIML, TwilioSms, parse_inbound, parse_status
from relay.carriers.twilio.voice import (
    NOT_IN_SERVICE,
    UNAVAILABLE,
    after_stream_twiml,
    answer_twiml,
    reject_twiml,
)

__all__ = [
    "BAD_SIGNATURE",
    "EMPTY_TWIML",
    "NOT_IN_SERVICE",
    "UNAVAILABLE",
    "TwilioCarrier",
    "TwilioSms",
    "after_stream_twiml",
    "answer_twiml",
    "parse_inbound",
    "parse_status",
    "reject_twiml",
    "signature_is_valid",
]
