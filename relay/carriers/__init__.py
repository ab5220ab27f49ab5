"""Carriers: who provisions numbers and carries calls and texts, one folder per vendor.

Each folder holds only vendor code (signature checks, answer documents, REST clients, wire
formats) and implements the one small seam, :class:`Carrier` (:mod:`relay.carriers.base`):
provision and release a number, dial (streaming to the relay's media socket) and hang up,
send a text, verify an inbound webhook. The HTTP handlers carriers call live in
:mod:`relay.api.carriers`; the media protocols in :mod:`relay.transports`.

    CarrierError                 refused or failed: 502 at the API, provider_error on a call
    ├── NoNumberAvailable        nothing left in the asked-for range (409 no_number_available)
    ├── CarrierUnavailable       could not reach the carrier (502 carrier_unavailable)
    ├── CarrierCredentialsInvalid  the carrier refused an account's credentials (422)
    └── DialFailed               the far end was not connected (``reason``: busy, no_answer...)
"""

from relay.carriers.base import (
    Carrier,
    CarrierCredentialsInvalid,
    CarrierError,
    CarrierRegistry,
    CarrierUnavailable,
    DialFailed,
    DialRequest,
    InboundWebhook,
    LegUpdate,
    MachineVerdict,
    NoNumberAvailable,
    OutboundLeg,
    ProvisionedNumber,
    ProvisionRequest,
)

__all__ = [
    "Carrier",
    "CarrierCredentialsInvalid",
    "CarrierError",
    "CarrierRegistry",
    "CarrierUnavailable",
    "DialFailed",
    "DialRequest",
    "InboundWebhook",
    "LegUpdate",
    "MachineVerdict",
    "NoNumberAvailable",
    "OutboundLeg",
    "ProvisionRequest",
    "ProvisionedNumber",
]
