"""Twilio as a carrier of calls: webhook signature checks and the TwiML that answers a call.

Inbound voice: Twilio POSTs ``/carriers/twilio/voice``; the relay answers with
``<Connect><Stream>`` pointing at its Media Streams socket (:mod:`relay.transports.twilio`).
"""

from relay.carriers.twilio.voice import (
    NOT_IN_SERVICE,
    UNAVAILABLE,
    answer_twiml,
    reject_twiml,
    signature_is_valid,
)

__all__ = ["NOT_IN_SERVICE", "UNAVAILABLE", "answer_twiml", "reject_twiml", "signature_is_valid"]
