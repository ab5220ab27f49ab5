"""The carrier seam: what every carrier does for the relay, and the errors it raises.

A carrier is one folder (``sim``, ``twilio``; Telnyx and Plivo next) that implements
:class:`Carrier`. Its HTTP side (inbound webhooks, answer documents served to it) is wired
in :mod:`relay.api.carriers`; the folder holds only what speaks to the vendor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from relay.carriers.sms import OutgoingText, SentText


class CarrierError(Exception):
    """A carrier refused or failed; ``code`` says why (a 502 at the API, ``provider_error``
    on a call)."""

    code = "carrier_error"


class NoNumberAvailable(CarrierError):
    code = "no_number_available"


class CarrierUnavailable(CarrierError):
    code = "carrier_unavailable"


class CarrierCredentialsInvalid(CarrierError):
    """The carrier refused the account's credentials (or the account is not active)."""

    code = "carrier_credentials_invalid"


class DialFailed(CarrierError):
    """The far end was not connected; ``reason`` is a call failure reason (``busy``...)."""

    code = "dial_failed"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    country: str
    area_code: str | None
    taken: frozenset[str]
    number_type: Literal["local", "mobile", "toll_free"] = "local"
    # The relay's public URL: the carrier points the new number's voice and SMS webhooks at
    # its own paths under it, in the same request that buys the number.
    webhook_base_url: str = ""


@dataclass(frozen=True, slots=True)
class ProvisionedNumber:
    phone_number: str
    country: str
    provider_sid: str | None
    capabilities: tuple[str, ...] = ("voice", "sms")


@dataclass(frozen=True, slots=True)
class DialRequest:
    call_id: str
    project_id: str
    carrier: str
    from_number: str
    to_number: str
    # Where the carrier streams the answered call's audio: ``wss://relay/media/...`` plus a
    # token naming the call (the carrier picks the path of its own media protocol).
    media_base_url: str
    media_token: str
    ring_timeout_seconds: float
    # The relay's public URL: the carrier's status callbacks go to its own path under it
    # (a path of the vendor's folder), with ``call_id`` in the signed URL.
    webhook_base_url: str = ""
    # Ask the carrier's answering-machine detection (the agent has ``voicemail``); its
    # verdicts come back through the carrier's signed callbacks (relay.calls.voicemail).
    detect_machine: bool = False


@dataclass(frozen=True, slots=True)
class LegUpdate:
    """What a carrier's status webhook said about an outbound leg, in the relay's terms.

    ``ringing``: the far end rings. ``ended``: the leg ended before it was answered, with
    ``reason`` a call failure reason (``busy``, ``no_answer``, ``provider_error``,
    ``canceled``). There is no ``answered``: a call is answered when its media socket opens
    (:func:`relay.calls.inbound.begin`), whatever the carrier says before that."""

    carrier_call_id: str
    status: Literal["ringing", "ended"]
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class MachineVerdict:
    """What a carrier's answering-machine detection said about an answered outbound call:
    who picked up and, for a machine, whether its greeting is over (a message left now is
    recorded: the beep, or the end of the greeting)."""

    answered_by: Literal["human", "machine", "unknown"]
    greeting_over: bool = False


class OutboundLeg(Protocol):
    """A call the carrier accepted to place. Its progress comes back through the carrier's
    status webhooks (:class:`LegUpdate`, handed to the dialler) and its media socket."""

    carrier_call_id: str

    async def hangup(self) -> None:
        """Cancel the leg while it rings (or end it if it was answered); idempotent."""


@dataclass(frozen=True, slots=True)
class InboundWebhook:
    """A request from a carrier as it signed it: the URL it asked for (our public URL with
    the path and query), its headers, the raw body and, for a form, its fields."""

    url: str
    headers: Mapping[str, str]
    body: bytes = b""
    form: Mapping[str, str] = field(default_factory=dict)


class Carrier(Protocol):
    """One carrier account's way to numbers, calls and texts."""

    name: str

    async def provision(self, request: ProvisionRequest) -> ProvisionedNumber:
        """Take a free number (not in ``request.taken``); NoNumberAvailable if none."""

    async def release(self, phone_number: str, provider_sid: str | None) -> None:
        """Give a provisioned number back to the carrier."""

    async def configure(
        self, phone_number: str, provider_sid: str | None, webhook_base_url: str
    ) -> None:
        """Point a number the account owns (an import) at the relay: its voice and SMS
        webhooks to the carrier's paths under ``webhook_base_url``."""

    async def dial(self, request: DialRequest) -> OutboundLeg:
        """Ask the carrier to ring ``to_number`` and stream the answered call to
        ``request.media_base_url``; return once the carrier accepted the call. DialFailed
        (or another CarrierError) if it refused."""

    async def hangup(self, carrier_call_id: str) -> None:
        """End a call the carrier carries, in either direction."""

    async def send_sms(self, text: OutgoingText) -> SentText:
        """Hand one text to the carrier; say how far it got while we waited."""

    def verify_webhook(self, webhook: InboundWebhook) -> bool:
        """Whether the carrier signed this request (checked before it touches anything)."""

    def for_account(self, credentials: Mapping[str, str]) -> Carrier:
        """This carrier on a project's own account (its stored credentials, decrypted); the
        carrier in the registry runs on the deployment's account."""

    async def close(self) -> None:
        """Release what the carrier holds open (HTTP sessions)."""


class CarrierRegistry:
    """The carriers numbers are provisioned from and calls dialled through, by name."""

    def __init__(self, carriers: list[Carrier], default: str) -> None:
        self._carriers = {c.name: c for c in carriers}
        self.default = default

    def get(self, name: str) -> Carrier | None:
        return self._carriers.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._carriers)


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
