"""Plivo: the V3 webhook signature, the XML that answers a call, the REST API (accounts,
numbers, texts, calls).

Plivo's webhooks are served by :mod:`relay.api.carriers.plivo`; its audio stream socket by
:mod:`relay.transports.plivo`.
"""

from relay.carriers.plivo.calls import (
    AMD_PATH,
    CALL_STATUS_PATH,
    OUTBOUND_ANSWER_PATH,
    SMS_PATH,
    VOICE_PATH,
    PlivoLeg,
    parse_call_status,
    parse_machine,
)
from relay.carriers.plivo.carrier import PlivoCarrier
from relay.carriers.plivo.rest import (
    AUTH_ID,
    OwnedNumber,
    PlivoCredentials,
    PlivoRest,
    e164_of,
    plivo_number,
)
from relay.carriers.plivo.signature import BAD_SIGNATURE, signature_is_valid
from relay.carriers.plivo.sms import parse_inbound, parse_status
from relay.carriers.plivo.voice import (
    NOT_IN_SERVICE,
    UNAVAILABLE,
    after_stream_xml,
    answer_xml,
    reject_xml,
)

__all__ = [
    "AUTH_ID",
    "BAD_SIGNATURE",
    "AMD_PATH",
    "CALL_STATUS_PATH",
    "OUTBOUND_ANSWER_PATH",
    "SMS_PATH",
    "VOICE_PATH",
    "PlivoLeg",
    "parse_call_status",
    "parse_machine",
    "NOT_IN_SERVICE",
    "UNAVAILABLE",
    "OwnedNumber",
    "PlivoCarrier",
    "PlivoCredentials",
    "PlivoRest",
    "after_stream_xml",
    "answer_xml",
    "e164_of",
    "parse_inbound",
    "parse_status",
    "plivo_number",
    "reject_xml",
    "signature_is_valid",
]
