"""The carrier a number is bought, configured and released with, and what to do when a bought
number cannot be stored.

A number is bought at the carrier before its row is written; if the row cannot be written
(another request stored the same number meanwhile, the database failed), the number goes
straight back to the carrier, so nobody pays for a number the relay does not know. If the
carrier will not take it back either, the answer says so and names the number (502
``number_release_failed``), and the log line too, for someone to release it by hand.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from relay.api.carrier_accounts import secret_box_error
from relay.api.routing import Context
from relay.carriers import Carrier, CarrierError, NoNumberAvailable, ProvisionedNumber
from relay.errors import APIError, ServiceUnavailable, invalid_field
from relay.logs import get_logger
from relay.secretbox import SecretBoxError
from relay.store.models import CarrierAccount, Number
from relay_numbers import TWILIO_DEPLOYMENT_KEY, sim_key
from relay_numbers.accounts import carrier_key_of

log = get_logger("relay.api.number_carriers")

NEEDS_ACCOUNT = (
    "Name the {provider} carrier account to use (carrierAccountId): this relay has no "
    "{provider} account of its own."
)
GIVEN_BACK = (
    "{phone} was bought at {carrier} but could not be stored, so it was given back; try again."
)
NOT_STORED = (
    "{phone} was bought at {carrier} but could not be stored, and {carrier} did not take it "
    "back ({why}); release it at {carrier}."
)


def carrier_error(exc: CarrierError) -> APIError:
    """A carrier's refusal as the API answers it: nothing free is 409, the rest 502."""
    err = APIError(str(exc), code=exc.code)
    err.status = 409 if isinstance(exc, NoNumberAvailable) else 502
    return err


@asynccontextmanager
async def carrier_of(
    ctx: Context, provider: str, account: CarrierAccount | None
) -> AsyncIterator[tuple[Carrier, str]]:
    """The carrier to reach ``provider`` with, on ``account`` (or the relay's own: the sim,
    the deployment's Twilio), and the carrier key its numbers are routed by; a project
    account's client is closed after."""
    base = ctx.state.carriers.get(provider)
    assert base is not None
    if provider == "sim":
        yield base, sim_key(ctx.project_id)
        return
    if account is None:
        settings = ctx.state.settings
        if provider != "twilio" or not (settings.twilio_account_sid and settings.twilio_auth_token):
            message = NEEDS_ACCOUNT.format(provider=provider.capitalize())
            raise invalid_field("carrierAccountId", message, "carrier_account_required")
        yield base, TWILIO_DEPLOYMENT_KEY
        return
    if account.credentials is None:
        message = NEEDS_ACCOUNT.format(provider=provider.capitalize())
        raise invalid_field("carrierAccountId", message, "carrier_account_required")
    try:
        fields = json.loads(ctx.state.secret_box.decrypt(account.credentials))
    except SecretBoxError as exc:
        raise secret_box_error(exc) from None
    carrier = base.for_account({str(k): str(v) for k, v in fields.items()})
    try:
        yield carrier, carrier_key_of(account)
    finally:
        await carrier.close()


async def give_back(carrier: Carrier, got: ProvisionedNumber, why: str) -> None:
    """Release a number that was bought but not stored; APIError if the carrier refuses."""
    try:
        await carrier.release(got.phone_number, got.provider_sid)
    except CarrierError as exc:
        log.error(
            "provisioned_number_not_stored",
            carrier=carrier.name,
            phone_number=got.phone_number,
            why=why,
            release_error=exc.code,
        )
        name = carrier.name.capitalize()
        message = NOT_STORED.format(phone=got.phone_number, carrier=name, why=exc.code)
        err = APIError(message, code="number_release_failed")
        err.status = 502
        raise err from None
    log.warning(
        "provisioned_number_given_back",
        carrier=carrier.name,
        phone_number=got.phone_number,
        why=why,
    )


async def store_bought(ctx: Context, carrier: Carrier, got: ProvisionedNumber, row: Number) -> bool:
    """Store a number just bought. False: another request stored the same number on the same
    account meanwhile (it is the relay's, so it stays bought; pick another). Any other
    failure gives the number back and answers 503 ``number_not_stored``."""
    try:
        async with ctx.state.db.session() as session:
            session.add(row)
        return True
    except IntegrityError as exc:
        if await _route_taken(ctx, row.carrier_key, row.phone_number):
            return False
        failure: Exception = exc
    except Exception as exc:  # the database failed: the number must not stay bought
        failure = exc
    log.error("provisioned_number_store_failed", carrier=carrier.name, error=type(failure).__name__)
    await give_back(carrier, got, type(failure).__name__)
    message = GIVEN_BACK.format(phone=got.phone_number, carrier=carrier.name.capitalize())
    raise ServiceUnavailable(message, code="number_not_stored") from None


async def _route_taken(ctx: Context, carrier_key: str, phone: str) -> bool:
    try:
        async with ctx.state.db.session() as session:
            found = await session.execute(
                select(Number.id).where(
                    Number.carrier_key == carrier_key,
                    Number.phone_number == phone,
                    Number.released_at.is_(None),
                )
            )
            return found.first() is not None
    except Exception:
        return False


__all__ = ["carrier_error", "carrier_of", "give_back", "store_bought"]
