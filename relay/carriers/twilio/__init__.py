"""Twilio: webhook signature checks, the TwiML that answers a call, the Calls and Messaging
REST clients.

Twilio's webhooks are served by :mod:`relay.api.carriers.twilio`; its Media Streams socket
by :mod:`relay.transports.twilio`.
"""

from relay.carriers.twilio.calls import (
    TwilioCalls,
    TwilioLeg,
    parse_answered_by,
    parse_call_status,
)
from relay.carriers.twilio.carrier import TwilioCarrier
from relay.carriers.twilio.signature import BAD_SIGNATURE, signature_is_valid
from relay.carriers.twilio.sms import EMPTY_TWIML, TwilioSms, parse_inbound, parse_status
from relay.carriers.twilio.voice import (
    AFTER_PATH,
    AMD_PATH,
    NOT_IN_SERVICE,
    SMS_PATH,
    STATUS_PATH,
    UNAVAILABLE,
    VOICE_PATH,
    after_stream_twiml,
    answer_twiml,
    reject_twiml,
)

__all__ = [
    "AFTER_PATH",
    "AMD_PATH",
    "BAD_SIGNATURE",
    "EMPTY_TWIML",
    "NOT_IN_SERVICE",
    "SMS_PATH",
    "STATUS_PATH",
    "UNAVAILABLE",
    "VOICE_PATH",
    "TwilioCalls",
    "TwilioCarrier",
    "TwilioLeg",
    "TwilioSms",
    "after_stream_twiml",
    "answer_twiml",
    "parse_answered_by",
    "parse_call_status",
    "parse_inbound",
    "parse_status",
    "reject_twiml",
    "signature_is_valid",
]
