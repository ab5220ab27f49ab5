"""Carrier accounts: a project's credentials at a carrier, verified with the carrier when
added, stored encrypted (:mod:`relay.secretbox`), and what the relay reads them for:
checking that an account owns a number, and checking a webhook's signature with the token
of the account the webhook names.

Only the carrier's name for the account (Twilio's AccountSid, Plivo's auth id) is stored in
the clear: inbound webhooks carry it, and routing is by it.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from relay.carriers import Carrier, CarrierRegistry
from relay.carriers.plivo.rest import PlivoCredentials
from relay.carriers.twilio.accounts import TwilioCredentials
from relay.logs import get_logger
from relay.secretbox import KeyMissing, SecretBox, SecretBoxError
from relay.store.db import Database
from relay.store.models import CarrierAccount, utcnow
from relay_numbers.keys import DEPLOYMENT, plivo_key, sim_key, telnyx_key, twilio_key

log = get_logger("relay_numbers.accounts")

PROVIDERS = ("twilio", "sim", "telnyx", "plivo")
STORED_WITHOUT_KEY = (
    "The database holds {count} carrier account(s) with encrypted credentials and "
    "RELAY_ENCRYPTION_KEY is not set: the relay cannot read them. Set the key they were "
    "stored with."
)


def hint_of(secret: str) -> str:
    """What the API shows of a secret: enough to tell two apart, never enough to use."""
    return "..." + secret[-4:] if len(secret) >= 12 else "..."


def seal_twilio(box: SecretBox, creds: TwilioCredentials) -> str:
    return box.encrypt(json.dumps({"accountSid": creds.account_sid, "authToken": creds.auth_token}))


def twilio_credentials(box: SecretBox, account: CarrierAccount) -> TwilioCredentials:
    assert account.credentials is not None
    data = json.loads(box.decrypt(account.credentials))
    return TwilioCredentials(str(data["accountSid"]), str(data["authToken"]))


def seal_plivo(box: SecretBox, creds: PlivoCredentials) -> str:
    return box.encrypt(json.dumps({"authId": creds.auth_id, "authToken": creds.auth_token}))


def plivo_credentials(box: SecretBox, account: CarrierAccount) -> PlivoCredentials:
    assert account.credentials is not None
    data = json.loads(box.decrypt(account.credentials))
    return PlivoCredentials(str(data["authId"]), str(data["authToken"]))


def carrier_key_of(account: CarrierAccount) -> str:
    if account.provider == "sim":
        return sim_key(account.project_id)
    assert account.account_sid is not None
    if account.provider == "telnyx":
        return telnyx_key(account.account_sid)
    if account.provider == "plivo":
        return plivo_key(account.account_sid)
    return twilio_key(account.account_sid)


async def twilio_tokens(db: Database, box: SecretBox, account_sid: str) -> list[str]:
    """The auth tokens of the live carrier accounts named ``account_sid`` (any project's:
    each was verified with Twilio, so each is the account's). One the key cannot open is
    left out (and logged): its webhooks are refused, its texts not sent."""
    if not account_sid or not box.configured:
        return []
    async with db.session() as session:
        accounts = (
            await session.execute(
                select(CarrierAccount).where(
                    CarrierAccount.provider == "twilio",
                    CarrierAccount.account_sid == account_sid,
                    CarrierAccount.deleted_at.is_(None),
                )
            )
        ).scalars()
        tokens = []
        for account in accounts:
            try:
                tokens.append(twilio_credentials(box, account).auth_token)
            except SecretBoxError as exc:
                log.error("carrier_credentials_unreadable", account_id=account.id, code=exc.code)
        return tokens


class AccountCarriers:
    """The carrier that carries a number's calls: the registry's own (the sim, the
    deployment's account) or the registry's carrier on the project account the number's
    carrier key names, made once per account and credentials and kept (its HTTP session)."""

    def __init__(self, db: Database, box: SecretBox, registry: CarrierRegistry) -> None:
        self.db = db
        self.box = box
        self.registry = registry
        self._made: dict[tuple[str, str, str], Carrier] = {}

    async def for_key(
        self, provider: str, carrier_key: str, account_id: str | None = None
    ) -> Carrier | None:
        """The carrier for ``carrier_key`` (``<provider>:<account>``), with the credentials
        of the project's carrier account ``account_id`` (the number's own) when given; None
        when the relay has no such carrier or the account is gone or unreadable."""
        base = self.registry.get(provider)
        account_name = carrier_key.partition(":")[2]
        if base is None or provider == "sim" or account_name in ("", DEPLOYMENT):
            return base
        lookup = select(CarrierAccount).where(
            CarrierAccount.provider == provider,
            CarrierAccount.account_sid == account_name,
            CarrierAccount.deleted_at.is_(None),
            CarrierAccount.credentials.is_not(None),
        )
        if account_id is not None:
            lookup = lookup.where(CarrierAccount.id == account_id)
        async with self.db.session() as session:
            account = (
                await session.execute(lookup.order_by(CarrierAccount.created_at).limit(1))
            ).scalar_one_or_none()
        if account is None or account.credentials is None:
            return None
        try:
            opened = self.box.decrypt(account.credentials)
        except SecretBoxError as exc:
            log.error("carrier_credentials_unreadable", account_id=account.id, code=exc.code)
            return None
        # Keyed by a digest of the credentials: new credentials make a new client.
        key = (provider, account_name, hashlib.sha256(opened.encode()).hexdigest())
        carrier = self._made.get(key)
        if carrier is None:
            creds = json.loads(opened)
            carrier = base.for_account({str(k): str(v) for k, v in creds.items()})
            self._made[key] = carrier
        return carrier

    async def close(self) -> None:
        made, self._made = list(self._made.values()), {}
        for carrier in made:
            await carrier.close()


async def plivo_accounts(db: Database, box: SecretBox, auth_id: str) -> list[PlivoCredentials]:
    """The credentials of the live Plivo carrier accounts with this auth id (any project's:
    each was verified with Plivo). One the key cannot open is left out (and logged)."""
    if not auth_id or not box.configured:
        return []
    async with db.session() as session:
        accounts = (
            await session.execute(
                select(CarrierAccount).where(
                    CarrierAccount.provider == "plivo",
                    CarrierAccount.account_sid == auth_id,
                    CarrierAccount.deleted_at.is_(None),
                )
            )
        ).scalars()
        found = []
        for account in accounts:
            try:
                found.append(plivo_credentials(box, account))
            except SecretBoxError as exc:
                log.error("carrier_credentials_unreadable", account_id=account.id, code=exc.code)
        return found


async def check_stored_credentials(db: Database, box: SecretBox) -> int:
    """At start-up: every stored credential opens with the configured key (raises
    :class:`relay.secretbox.SecretBoxError` if not), and, while several keys are configured,
    is re-encrypted with the first, so the old key can be dropped after this start.

    A database that cannot be asked (unreachable, not migrated) is left to ``/readyz`` to
    report; credentials found unreadable later are refused where they are used."""
    try:
        return await _check_stored_credentials(db, box)
    except (DBAPIError, OSError) as exc:  # asyncpg raises a refused connection as it is
        log.warning("carrier_credentials_unchecked", error=type(exc).__name__)
        return 0


async def _check_stored_credentials(db: Database, box: SecretBox) -> int:
    async with db.writing() as session:
        accounts = list(
            (
                await session.execute(
                    select(CarrierAccount).where(CarrierAccount.credentials.is_not(None))
                )
            ).scalars()
        )
        if accounts and not box.configured:
            raise KeyMissing(STORED_WITHOUT_KEY.format(count=len(accounts)))
        for account in accounts:
            assert account.credentials is not None
            box.decrypt(account.credentials)
            if box.key_count > 1:
                account.credentials = box.rotate(account.credentials)
                account.updated_at = utcnow()
    if accounts and box.key_count > 1:
        log.info("carrier_credentials_reencrypted", accounts=len(accounts))
    return len(accounts)


__all__ = [
    "PROVIDERS",
    "AccountCarriers",
    "carrier_key_of",
    "check_stored_credentials",
    "hint_of",
    "plivo_accounts",
    "plivo_credentials",
    "seal_plivo",
    "seal_twilio",
    "twilio_credentials",
    "twilio_tokens",
]
