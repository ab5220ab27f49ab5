"""Telnyx carrier accounts: are these credentials an account's, and does it own this number.

Verified when added with cheap authenticated reads: ``GET /v2/balance`` (the API key opens an
account) and ``GET /v2/call_control_applications/{id}`` (the Call Control Application calls
use is that account's); the public key must be an Ed25519 key (Telnyx offers no read to
compare it with: a wrong one shows as refused webhooks). The relay then points the
application's webhooks (and the messaging profile's, if given) at itself.
Ownership of a number: ``GET /v2/phone_numbers?filter[phone_number]=+1...``.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.carriers.base import CarrierCredentialsInvalid
from relay.carriers.telnyx.api import TelnyxApi, TelnyxApiError, TelnyxCredentials
from relay.carriers.telnyx.carrier import CALL_PATH, MESSAGE_PATH
from relay.carriers.telnyx.signature import public_key_of

BAD_PUBLIC_KEY = "publicKey must be the account's Ed25519 public key, base64 (32 bytes)."
NO_APPLICATION = "Telnyx has no Call Control Application {id} on this account."
NO_PROFILE = "Telnyx has no messaging profile {id} on this account."


@dataclass(frozen=True, slots=True)
class OwnedNumber:
    phone_number: str
    provider_sid: str
    capabilities: tuple[str, ...] = ("voice", "sms")


def message_webhook_url(public_url: str, connection_id: str) -> str:
    """Messaging webhooks name no application: the relay's URL carries it."""
    return f"{public_url.rstrip('/')}{MESSAGE_PATH}?connection={connection_id}"


class TelnyxAccounts:
    def __init__(self, api_base_url: str = "", *, timeout: float = 10.0) -> None:
        self.base_url = api_base_url
        self.timeout = timeout

    async def verify(self, creds: TelnyxCredentials, public_url: str) -> None:
        """The credentials open the account and its application (CarrierCredentialsInvalid if
        not); the application's and the profile's webhooks now point at ``public_url``."""
        try:
            public_key_of(creds.public_key)
        except ValueError:
            raise CarrierCredentialsInvalid(BAD_PUBLIC_KEY) from None
        api = TelnyxApi(creds.api_key, base_url=self.base_url, timeout=self.timeout)
        try:
            await api.balance()
            try:
                app = await api.call_control_application(creds.connection_id)
            except TelnyxApiError as exc:
                if exc.status == 404:
                    raise CarrierCredentialsInvalid(
                        NO_APPLICATION.format(id=creds.connection_id)
                    ) from None
                raise
            name = str(app.get("application_name") or "relay")
            await api.point_application(
                creds.connection_id, name, f"{public_url.rstrip('/')}{CALL_PATH}"
            )
            if creds.messaging_profile_id:
                try:
                    await api.point_messaging_profile(
                        creds.messaging_profile_id,
                        message_webhook_url(public_url, creds.connection_id),
                    )
                except TelnyxApiError as exc:
                    if exc.status == 404:
                        raise CarrierCredentialsInvalid(
                            NO_PROFILE.format(id=creds.messaging_profile_id)
                        ) from None
                    raise
        finally:
            await api.close()

    async def owned_number(self, creds: TelnyxCredentials, phone_number: str) -> OwnedNumber | None:
        api = TelnyxApi(creds.api_key, base_url=self.base_url, timeout=self.timeout)
        try:
            found = await api.phone_numbers(phone_number)
        finally:
            await api.close()
        for item in found:
            if item.get("phone_number") == phone_number and item.get("status", "active") in (
                "active",
                "purchase-pending",
            ):
                return OwnedNumber(phone_number, str(item.get("id") or ""))
        return None


__all__ = ["BAD_PUBLIC_KEY", "OwnedNumber", "TelnyxAccounts", "message_webhook_url"]
