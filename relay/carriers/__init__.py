"""Carriers: who provisions numbers and carries calls and texts.

The seam is small on purpose (httpx's one-method transport is the model): a carrier can
provision a number and release it. Calls and messages join this interface in later work.

    CarrierError                 a carrier refused or failed; becomes a 502/409 at the API
    ├── NoNumberAvailable        nothing left in the asked-for range (409 no_number_available)
    └── CarrierUnavailable       could not reach the carrier (502 carrier_unavailable)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class CarrierError(Exception):
    code = "carrier_error"


class NoNumberAvailable(CarrierError):
    code = "no_number_available"


class CarrierUnavailable(CarrierError):
    code = "carrier_unavailable"


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    country: str
    area_code: str | None
    taken: frozenset[str]


@dataclass(frozen=True, slots=True)
class ProvisionedNumber:
    phone_number: str
    country: str
    provider_sid: str | None
    capabilities: tuple[str, ...] = ("voice", "sms")


class Carrier(Protocol):
    name: str

    async def provision(self, request: ProvisionRequest) -> ProvisionedNumber: ...

    async def release(self, phone_number: str, provider_sid: str | None) -> None: ...


class CarrierRegistry:
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
    "CarrierError",
    "CarrierRegistry",
    "CarrierUnavailable",
    "NoNumberAvailable",
    "ProvisionRequest",
    "ProvisionedNumber",
]
