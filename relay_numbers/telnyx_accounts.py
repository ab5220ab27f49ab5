"""Telnyx carrier accounts: their sealed credentials, and the carrier each one is.

A Telnyx account is named by its Call Control Application (``connection_id``: what call
webhooks carry, and what the relay puts in its messaging webhook URLs); it is stored as the
account's ``account_sid`` and numbers under it are routed by ``telnyx:<connection id>``.
Several projects may add the same application: a webhook is theirs when one of their public
keys checks its signature, as with Twilio's auth tokens.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select

from relay.carriers.telnyx import TelnyxCarrier, TelnyxCredentials, credentials_of
from relay.logs import get_logger
from relay.secretbox import SecretBox, SecretBoxError
from relay.store.db import Database
from relay.store.models import CarrierAccount

log = get_logger("relay_numbers.telnyx_accounts")


def seal_telnyx(box: SecretBox, creds: TelnyxCredentials) -> str:
    return box.encrypt(json.dumps(_fields(creds)))


def telnyx_credentials(box: SecretBox, account: CarrierAccount) -> TelnyxCredentials:
    assert account.credentials is not None
    return credentials_of(json.loads(box.decrypt(account.credentials)))


class TelnyxCarriers:
    """The carriers of the live Telnyx accounts, by connection id, made once per account and
    credentials and kept (each holds an HTTP session)."""

    def __init__(
        self, db: Database, box: SecretBox, *, public_url: str, api_base_url: str = ""
    ) -> None:
        self.db = db
        self.box = box
        self.base = TelnyxCarrier(public_url=public_url, api_base_url=api_base_url)
        self._made: dict[str, TelnyxCarrier] = {}

    async def for_connection(self, connection_id: str) -> list[TelnyxCarrier]:
        """One carrier per live account on that application (any project's: each was
        verified with Telnyx). An account the key cannot open is left out, and logged."""
        if not connection_id or not self.box.configured:
            return []
        async with self.db.session() as session:
            accounts = list(
                (
                    await session.execute(
                        select(CarrierAccount).where(
                            CarrierAccount.provider == "telnyx",
                            CarrierAccount.account_sid == connection_id,
                            CarrierAccount.deleted_at.is_(None),
                            CarrierAccount.credentials.is_not(None),
                        )
                    )
                ).scalars()
            )
        carriers = []
        for account in accounts:
            try:
                creds = telnyx_credentials(self.box, account)
            except SecretBoxError as exc:
                log.error("carrier_credentials_unreadable", account_id=account.id, code=exc.code)
                continue
            digest = hashlib.sha256(repr((creds.api_key, creds.public_key)).encode()).hexdigest()
            carrier = self._made.get(digest)
            if carrier is None:
                carrier = self._made[digest] = self.base.for_account(_fields(creds))
            carriers.append(carrier)
        return carriers

    async def for_key(self, carrier_key: str) -> TelnyxCarrier | None:
        """The carrier for a number's ``telnyx:<connection id>`` key (its first account)."""
        found = await self.for_connection(carrier_key.removeprefix("telnyx:"))
        return found[0] if found else None

    async def close(self) -> None:
        made, self._made = list(self._made.values()), {}
        for carrier in made:
            await carrier.close()
        await self.base.close()


def _fields(creds: TelnyxCredentials) -> dict[str, str]:
    return {
        "apiKey": creds.api_key,
        "publicKey": creds.public_key,
        "connectionId": creds.connection_id,
        "messagingProfileId": creds.messaging_profile_id or "",
    }


__all__ = ["TelnyxCarriers", "seal_telnyx", "telnyx_credentials"]
