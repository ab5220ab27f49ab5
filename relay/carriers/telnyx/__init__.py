"""Telnyx: Call Control and Messaging over its REST API v2, webhooks signed with Ed25519.

Its webhooks are served by :mod:`relay.api.carriers.telnyx`; its media streaming socket by
:mod:`relay.transports.telnyx`.
"""

from relay.carriers.telnyx.api import TelnyxApi, TelnyxApiError, TelnyxCredentials
from relay.carriers.telnyx.carrier import (
    CALL_PATH,
    MEDIA_PATH,
    MESSAGE_PATH,
    TelnyxCarrier,
    TelnyxLeg,
    credentials_of,
)
from relay.carriers.telnyx.signature import BAD_SIGNATURE, signature_is_valid

__all__ = [
    "BAD_SIGNATURE",
    "CALL_PATH",
    "MEDIA_PATH",
    "MESSAGE_PATH",
    "TelnyxApi",
    "TelnyxApiError",
    "TelnyxCarrier",
    "TelnyxCredentials",
    "TelnyxLeg",
    "credentials_of",
    "signature_is_valid",
]
