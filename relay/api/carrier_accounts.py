"""``/v1/carrier-accounts``: a project's accounts at carriers, the numbers' proof of ownership.

A Twilio account is verified with Twilio when it is added (and when its credentials change):
a cheap authenticated read of the account. Its credentials are stored encrypted with
``RELAY_ENCRYPTION_KEY`` and never answered again: responses show the AccountSid and the
last characters of the auth token. A Telnyx account is verified the same way (the API key
opens the account and its Call Control Application, whose webhooks the relay then points at
itself); responses show the application's id and the API key's last characters. A Plivo
account is verified by reading it (``GET /v1/Account/{auth_id}/``) with its auth id and auth
token. A ``sim`` account needs no credentials: it is the project's account at the relay's
embedded carrier.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.api.pagination import fetch_page, newest_first
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, Deleted, OutModel, Page, PageQuery
from relay.carriers import CarrierCredentialsInvalid, CarrierError
from relay.carriers.plivo import PlivoCredentials, PlivoRest
from relay.carriers.telnyx import TelnyxCredentials
from relay.carriers.telnyx.accounts import TelnyxAccounts
from relay.carriers.twilio.accounts import TwilioAccounts, TwilioCredentials
from relay.errors import APIError, Conflict, NotFound, ServiceUnavailable, invalid_field
from relay.ids import new_id
from relay.secretbox import SecretBoxError
from relay.store.models import CarrierAccount, Number, utcnow
from relay_numbers.accounts import (
    hint_of,
    plivo_credentials,
    seal_plivo,
    seal_twilio,
    twilio_credentials,
)
from relay_numbers.telnyx_accounts import seal_telnyx

router = Router()
TAG = "Carrier accounts"
NEEDS_CREDENTIALS = {
    "twilio": "A twilio account needs credentials: {accountSid, authToken}.",
    "telnyx": "A telnyx account needs credentials: {apiKey, publicKey, connectionId}.",
    "plivo": "A plivo account needs credentials: {authId, authToken}.",
}
WRONG_CREDENTIALS = "These are not {provider} credentials."
SIM_NEEDS_NONE = "A sim account takes no credentials."
SAME_ACCOUNT = "New credentials must be for the same account ({sid}); add another account instead."
TELNYX_ID = r"^[A-Za-z0-9_-]{1,64}$"
IN_USE = "The account still has {count} active number(s); release them first."
SID_PATTERN = r"^AC[0-9a-fA-F]{32}$"


class TwilioCredentialsIn(APIModel):
    account_sid: str = Field(pattern=SID_PATTERN, description="The account's SID, AC...")
    auth_token: str = Field(
        min_length=16, max_length=128, pattern=r"^[A-Za-z0-9]+$", description="Never answered."
    )


class TelnyxCredentialsIn(APIModel):
    api_key: str = Field(
        min_length=16, max_length=200, pattern=r"^[A-Za-z0-9_-]+$", description="Never answered."
    )
    public_key: str = Field(
        min_length=44,
        max_length=44,
        pattern=r"^[A-Za-z0-9+/]{43}=$",
        description="The account's Ed25519 public key (base64), which signs its webhooks.",
    )
    connection_id: str = Field(pattern=TELNYX_ID, description="The Call Control Application.")
    messaging_profile_id: str | None = Field(
        default=None, pattern=TELNYX_ID, description="Whose texts' webhooks the relay sets."
    )


class PlivoCredentialsIn(APIModel):
    auth_id: str = Field(
        pattern=r"^(MA|SA)[A-Z0-9]{18}$", description="The account's auth id, MA... or SA..."
    )
    auth_token: str = Field(
        min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$", description="Never answered."
    )


Credentials = TwilioCredentialsIn | TelnyxCredentialsIn | PlivoCredentialsIn


class CarrierAccountCreate(APIModel):
    provider: Literal["twilio", "telnyx", "plivo", "sim"]
    name: str | None = Field(default=None, max_length=200)
    credentials: Credentials | None = None


class CarrierAccountUpdate(APIModel):
    name: str | None = Field(default=None, max_length=200)
    credentials: Credentials | None = Field(
        default=None, description="New credentials for the same account, verified again."
    )


class MaskedCredentials(OutModel):
    account_sid: str
    auth_token: str = Field(description="Masked: only its last characters.")


class MaskedTelnyxCredentials(OutModel):
    connection_id: str
    api_key: str = Field(description="Masked: only its last characters.")


class MaskedPlivoCredentials(OutModel):
    auth_id: str
    auth_token: str = Field(description="Masked: only its last characters.")


class CarrierAccountOut(OutModel):
    id: str
    object: Literal["carrier_account"] = "carrier_account"
    provider: str
    name: str | None
    credentials: MaskedCredentials | MaskedTelnyxCredentials | MaskedPlivoCredentials | None
    created_at: datetime
    updated_at: datetime


def account_out(a: CarrierAccount) -> CarrierAccountOut:
    masked: MaskedCredentials | MaskedTelnyxCredentials | MaskedPlivoCredentials | None = None
    if a.account_sid is not None and a.provider == "telnyx":
        masked = MaskedTelnyxCredentials(
            connection_id=a.account_sid, api_key=a.credentials_hint or ""
        )
    elif a.account_sid is not None and a.provider == "plivo":
        masked = MaskedPlivoCredentials(auth_id=a.account_sid, auth_token=a.credentials_hint or "")
    elif a.account_sid is not None:
        masked = MaskedCredentials(account_sid=a.account_sid, auth_token=a.credentials_hint or "")
    return CarrierAccountOut(
        id=a.id,
        provider=a.provider,
        name=a.name,
        credentials=masked,
        created_at=a.created_at,
        updated_at=a.updated_at,
    )


def carrier_api_error(exc: CarrierError) -> APIError:
    """A carrier's answer about credentials as the API's: refused is the caller's mistake
    (422), unreachable is not (502)."""
    if isinstance(exc, CarrierCredentialsInvalid):
        return invalid_field("credentials", str(exc), exc.code)
    err = APIError(str(exc), code=exc.code)
    err.status = 502
    return err


def secret_box_error(exc: SecretBoxError) -> ServiceUnavailable:
    return ServiceUnavailable(str(exc), code=exc.code)


async def load_account(ctx: Context, session: AsyncSession, account_id: str) -> CarrierAccount:
    account: CarrierAccount | None = (
        await session.execute(
            select(CarrierAccount).where(
                CarrierAccount.id == account_id,
                CarrierAccount.project_id == ctx.project_id,
                CarrierAccount.deleted_at.is_(None),
            )
        )
    ).scalar_one_or_none()
    if account is None:
        raise NotFound(f"No carrier account {account_id!r} in this project.")
    return account


async def _verified(ctx: Context, provider: str, given: Credentials) -> tuple[str, str, str]:
    """The credentials, once the carrier accepted them: (the account's name at the carrier,
    the hint the API shows of the secret, the sealed credentials)."""
    settings = ctx.state.settings
    try:
        # Sealed before asking the carrier: no key, no ask.
        if provider == "twilio" and isinstance(given, TwilioCredentialsIn):
            twilio = TwilioCredentials(given.account_sid, given.auth_token)
            sealed = seal_twilio(ctx.state.secret_box, twilio)
            name, secret = twilio.account_sid, twilio.auth_token
        elif provider == "plivo" and isinstance(given, PlivoCredentialsIn):
            plivo = PlivoCredentials(given.auth_id, given.auth_token)
            sealed = seal_plivo(ctx.state.secret_box, plivo)
            name, secret = plivo.auth_id, plivo.auth_token
        elif provider == "telnyx" and isinstance(given, TelnyxCredentialsIn):
            telnyx = TelnyxCredentials(
                given.api_key, given.public_key, given.connection_id, given.messaging_profile_id
            )
            sealed = seal_telnyx(ctx.state.secret_box, telnyx)
            name, secret = telnyx.connection_id, telnyx.api_key
        else:
            raise invalid_field("credentials", WRONG_CREDENTIALS.format(provider=provider))
    except SecretBoxError as exc:
        raise secret_box_error(exc) from None
    try:
        if provider == "twilio":
            await TwilioAccounts(settings.twilio_api_base_url).verify(twilio)
        elif provider == "plivo":
            rest = PlivoRest(plivo, settings.plivo_api_base_url)
            try:
                await rest.verify()
            finally:
                await rest.close()
        else:
            public = settings.effective_public_url()
            await TelnyxAccounts(settings.telnyx_api_base_url).verify(telnyx, public)
    except CarrierError as exc:
        raise carrier_api_error(exc) from None
    return name, hint_of(secret), sealed


def twilio_of(ctx: Context, account: CarrierAccount) -> TwilioCredentials:
    try:
        return twilio_credentials(ctx.state.secret_box, account)
    except SecretBoxError as exc:
        raise secret_box_error(exc) from None


def plivo_of(ctx: Context, account: CarrierAccount) -> PlivoCredentials:
    try:
        return plivo_credentials(ctx.state.secret_box, account)
    except SecretBoxError as exc:
        raise secret_box_error(exc) from None


@router.route(
    "POST",
    "/v1/carrier-accounts",
    summary="Add a carrier account",
    tag=TAG,
    body=CarrierAccountCreate,
    response=CarrierAccountOut,
    status=201,
    errors=(400, 401, 403, 415, 422, 429, 502, 503),
)
async def create_account(ctx: Context, body: CarrierAccountCreate) -> CarrierAccountOut:
    """Credentials are verified with the carrier first (422 ``carrier_credentials_invalid``
    if it refuses them, 502 ``carrier_unavailable`` if it cannot be reached) and stored
    encrypted (503 ``encryption_key_missing`` while the relay has no key). A Telnyx
    account's Call Control Application (and messaging profile) then sends its webhooks to
    this relay."""
    now = utcnow()
    account = CarrierAccount(
        id=new_id("ca"),
        project_id=ctx.project_id,
        provider=body.provider,
        name=body.name,
        created_at=now,
        updated_at=now,
    )
    if body.provider == "sim":
        if body.credentials is not None:
            raise invalid_field("credentials", SIM_NEEDS_NONE)
    else:
        if body.credentials is None:
            raise invalid_field("credentials", NEEDS_CREDENTIALS[body.provider])
        name, hint, sealed = await _verified(ctx, body.provider, body.credentials)
        account.account_sid, account.credentials_hint, account.credentials = name, hint, sealed
    async with ctx.state.db.session() as session:
        session.add(account)
    return account_out(account)


@router.route(
    "GET",
    "/v1/carrier-accounts",
    summary="List carrier accounts",
    tag=TAG,
    query=PageQuery,
    response=Page[CarrierAccountOut],
    errors=(401, 403, 422, 429),
)
async def list_accounts(ctx: Context, query: PageQuery) -> Page[CarrierAccountOut]:
    stmt = select(CarrierAccount).where(
        CarrierAccount.project_id == ctx.project_id, CarrierAccount.deleted_at.is_(None)
    )
    stmt = newest_first(stmt, CarrierAccount.id, query)
    async with ctx.state.db.session() as session:
        window = await fetch_page(session, stmt, query)
    return window.page(Page[CarrierAccountOut], account_out)


@router.route(
    "GET",
    "/v1/carrier-accounts/{account_id}",
    summary="Get a carrier account",
    tag=TAG,
    response=CarrierAccountOut,
    errors=(401, 403, 404, 429),
)
async def get_account(ctx: Context) -> CarrierAccountOut:
    async with ctx.state.db.session() as session:
        return account_out(await load_account(ctx, session, ctx.path("account_id")))


@router.route(
    "PATCH",
    "/v1/carrier-accounts/{account_id}",
    summary="Rename a carrier account or replace its credentials",
    tag=TAG,
    body=CarrierAccountUpdate,
    response=CarrierAccountOut,
    errors=(400, 401, 403, 404, 415, 422, 429, 502, 503),
)
async def update_account(ctx: Context, body: CarrierAccountUpdate) -> CarrierAccountOut:
    """New credentials (a rotated auth token) must be for the same account and are verified
    with the carrier before they replace the old ones."""
    async with ctx.state.db.session() as session:
        account = await load_account(ctx, session, ctx.path("account_id"))
    fields: dict[str, Any] = {}
    if "name" in body.model_fields_set:
        fields["name"] = body.name
    if body.credentials is not None:
        if account.provider == "sim":
            raise invalid_field("credentials", SIM_NEEDS_NONE)
        given = body.credentials
        named = (
            given.account_sid
            if isinstance(given, TwilioCredentialsIn)
            else given.auth_id
            if isinstance(given, PlivoCredentialsIn)
            else given.connection_id
        )
        if named != account.account_sid:
            raise invalid_field("credentials", SAME_ACCOUNT.format(sid=account.account_sid))
        _, fields["credentials_hint"], fields["credentials"] = await _verified(
            ctx, account.provider, given
        )
    async with ctx.state.db.session() as session:
        account = await load_account(ctx, session, ctx.path("account_id"))
        for name, value in fields.items():
            setattr(account, name, value)
        if fields:
            account.updated_at = utcnow()
        return account_out(account)


@router.route(
    "DELETE",
    "/v1/carrier-accounts/{account_id}",
    summary="Remove a carrier account",
    tag=TAG,
    response=Deleted,
    errors=(401, 403, 404, 409, 429),
)
async def delete_account(ctx: Context) -> Deleted:
    """Refused (409 ``carrier_account_in_use``) while numbers are imported under it. Its
    credentials are erased, not only hidden."""
    async with ctx.state.db.session() as session:
        account = await load_account(ctx, session, ctx.path("account_id"))
        active = (
            await session.execute(
                select(func.count())
                .select_from(Number)
                .where(Number.carrier_account_id == account.id, Number.released_at.is_(None))
            )
        ).scalar_one()
        if active:
            raise Conflict(IN_USE.format(count=active), code="carrier_account_in_use")
        account.deleted_at = account.updated_at = utcnow()
        account.credentials = None
    return Deleted(id=account.id, object="carrier_account")


__all__ = [
    "carrier_api_error",
    "load_account",
    "plivo_of",
    "router",
    "secret_box_error",
    "twilio_of",
]
