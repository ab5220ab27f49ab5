"""``/v1/numbers``: provision from a carrier, import one you own, bind to an agent, release.

An import is proved: the carrier account it names (or the project's sim account, or the
deployment's own Twilio account) must own the number, as the carrier says. A number the
account does not own and a number another project already imported under the same account
get the same answer (422 ``number_not_owned``), so an import tells nothing about other
projects. Numbers are routed by (carrier account, number): :mod:`relay_numbers.keys`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from relay.api.agents import load_agent
from relay.api.carrier_accounts import (
    carrier_api_error,
    load_account,
    plivo_of,
    secret_box_error,
    twilio_of,
)
from relay.api.number_carriers import carrier_error, carrier_of, store_bought
from relay.api.pagination import fetch_page, newest_first
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, Deleted, OutModel, Page, PageQuery
from relay.carriers import CarrierError, ProvisionRequest
from relay.carriers.plivo import SMS_PATH, VOICE_PATH, PlivoRest
from relay.carriers.sim import SIM_RANGES, sim_country_of
from relay.carriers.telnyx import TelnyxCarrier
from relay.carriers.telnyx.accounts import TelnyxAccounts
from relay.carriers.twilio.accounts import TwilioAccounts, TwilioCredentials
from relay.errors import APIError, Conflict, NotFound, invalid_field
from relay.ids import new_id
from relay.phone import region_of, to_e164
from relay.secretbox import SecretBoxError
from relay.store.models import CarrierAccount, Number, utcnow
from relay_numbers import TWILIO_DEPLOYMENT_KEY, plivo_key, sim_key, twilio_key
from relay_numbers.keys import telnyx_key
from relay_numbers.telnyx_accounts import telnyx_credentials

router = Router()
TAG = "Numbers"
NUMBER_TAKEN = "This project already has this number on this carrier account."
NOT_OWNED = "{account} has no number {phone}."
NOT_IN_SIM_RANGES = "The sim carrier has no number {phone}: its ranges are {ranges}."
NOT_VERIFIABLE = (
    "This relay cannot prove who owns {provider} numbers yet; it imports twilio, telnyx, "
    "plivo and sim numbers."
)
NEEDS_ACCOUNT = (
    "Name the Twilio carrier account that owns the number (carrierAccountId): this relay has "
    "no Twilio account of its own (RELAY_TWILIO_ACCOUNT_SID)."
)
NEEDS_TELNYX_ACCOUNT = "Name the Telnyx carrier account that owns the number (carrierAccountId)."
PLIVO_NEEDS_ACCOUNT = "Name the Plivo carrier account that owns the number (carrierAccountId)."
WRONG_PROVIDER = "Carrier account {id} is a {provider} account, not {wanted}."
UNKNOWN_CARRIER = "Unknown carrier {name!r}; this relay has: {names}."


class NumberCreate(APIModel):
    country: str = Field(default="US", min_length=2, max_length=2, description="ISO 3166 alpha-2.")
    area_code: str | None = Field(default=None, pattern=r"^[0-9]{1,5}$")
    type: Literal["local", "mobile", "toll_free"] = Field(
        default="local",
        description="The kind of number to buy (``twilio``, ``telnyx``, ``plivo``; the sim's "
        "are local).",
    )
    provider: str = Field(default="sim", max_length=20, description="Carrier to provision from.")
    carrier_account_id: str | None = Field(
        default=None,
        max_length=60,
        description="The carrier account to buy it with (``/v1/carrier-accounts``; required "
        "for ``telnyx`` and ``plivo``). Without it: the project's sim account for ``sim``, "
        "the deployment's own Twilio account for ``twilio``.",
    )
    agent_id: str | None = Field(default=None, max_length=60)

    @field_validator("country")
    @classmethod
    def _upper(cls, value: str) -> str:
        if not value.isalpha():
            raise ValueError("country must be two letters, like US")
        return value.upper()


class NumberImport(APIModel):
    provider: Literal["twilio", "sim", "telnyx", "plivo", "vonage", "sip"]
    phone_number: str = Field(max_length=40)
    carrier_account_id: str | None = Field(
        default=None,
        max_length=60,
        description="The carrier account that owns the number (``/v1/carrier-accounts``). "
        "Without it: the project's sim account for ``sim``, the deployment's own Twilio "
        "account (RELAY_TWILIO_*) for ``twilio``.",
    )
    credentials_ref: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Deprecated: a label kept with the number; ownership is proved with "
        "``carrierAccountId``.",
    )
    provider_sid: str | None = Field(
        default=None, max_length=100, description="Ignored where the carrier reports its own."
    )
    agent_id: str | None = Field(default=None, max_length=60)
    configure_webhooks: bool = Field(
        default=True,
        description="Point the number's voice and SMS webhooks at this relay at the carrier "
        "(``twilio``); false leaves them as they are.",
    )


class NumberUpdate(APIModel):
    agent_id: str | None = Field(description="Agent to bind; null unbinds.", max_length=60)


class NumberOut(OutModel):
    id: str
    object: Literal["number"] = "number"
    phone_number: str
    country: str
    provider: str
    source: Literal["provisioned", "imported"]
    agent_id: str | None
    capabilities: list[str]
    carrier_account_id: str | None
    credentials_ref: str | None
    created_at: datetime


class NumberQuery(PageQuery):
    agent_id: str | None = Field(default=None, max_length=60)


def _out(n: Number) -> NumberOut:
    return NumberOut(
        id=n.id,
        phone_number=n.phone_number,
        country=n.country,
        provider=n.provider,
        source="imported" if n.source == "imported" else "provisioned",
        agent_id=n.agent_id,
        capabilities=list(n.capabilities),
        carrier_account_id=n.carrier_account_id,
        credentials_ref=n.credentials_ref,
        created_at=n.created_at,
    )


async def _load(ctx: Context, session: Any, number_id: str) -> Number:
    n: Number | None = (
        await session.execute(
            select(Number).where(
                Number.id == number_id,
                Number.project_id == ctx.project_id,
                Number.released_at.is_(None),
            )
        )
    ).scalar_one_or_none()
    if n is None:
        raise NotFound(f"No number {number_id!r} in this project.")
    return n


async def _taken(ctx: Context) -> frozenset[str]:
    async with ctx.state.db.session() as session:
        rows = await session.execute(
            select(Number.phone_number).where(Number.released_at.is_(None))
        )
        return frozenset(r[0] for r in rows)


@router.route(
    "POST",
    "/v1/numbers",
    summary="Provision a number",
    tag=TAG,
    body=NumberCreate,
    response=NumberOut,
    status=201,
    errors=(400, 401, 403, 404, 409, 415, 422, 429, 502, 503),
)
async def create_number(ctx: Context, body: NumberCreate) -> NumberOut:
    """Provisions from ``provider`` (default ``sim``, the embedded carrier, whose numbers lie
    in ranges reserved for fiction). ``areaCode`` is honoured where the range allows. A
    ``twilio`` number is bought on the carrier account named (or the deployment's own), with
    its voice and SMS webhooks already pointing at this relay; a ``telnyx`` one on the
    account's Call Control Application and messaging profile; a ``plivo`` one on the
    account's application for this relay. A number bought but not stored is given back."""
    if ctx.state.carriers.get(body.provider) is None:
        raise invalid_field(
            "provider",
            UNKNOWN_CARRIER.format(name=body.provider, names=", ".join(ctx.state.carriers.names)),
            "unknown_provider",
        )
    account: CarrierAccount | None = None
    async with ctx.state.db.session() as session:
        if body.agent_id is not None:
            await load_agent(ctx, session, body.agent_id)
        if body.carrier_account_id is not None:
            account = await _account_for(ctx, session, body.carrier_account_id, body.provider)
    public_url = ctx.state.settings.effective_public_url()
    async with carrier_of(ctx, body.provider, account) as (carrier, carrier_key):
        for _attempt in range(5):
            request = ProvisionRequest(
                body.country, body.area_code, await _taken(ctx), body.type, public_url
            )
            try:
                got = await carrier.provision(request)
            except CarrierError as exc:
                raise carrier_error(exc) from exc
            number = Number(
                id=new_id("num"),
                project_id=ctx.project_id,
                phone_number=got.phone_number,
                country=got.country,
                provider=carrier.name,
                source="provisioned",
                provider_sid=got.provider_sid,
                carrier_account_id=account.id if account is not None else None,
                carrier_key=carrier_key,
                agent_id=body.agent_id,
                capabilities=list(got.capabilities),
                created_at=utcnow(),
            )
            if await store_bought(ctx, carrier, got, number):
                return _out(number)
    raise Conflict("Could not reserve a free number; try again.", code="no_number_available")


async def _account_for(
    ctx: Context, session: Any, account_id: str, provider: str
) -> CarrierAccount:
    try:
        account = await load_account(ctx, session, account_id)
    except NotFound as exc:
        raise NotFound(exc.message, field="carrierAccountId") from None
    if account.provider != provider:
        message = WRONG_PROVIDER.format(id=account.id, provider=account.provider, wanted=provider)
        raise invalid_field("carrierAccountId", message, "carrier_account_mismatch")
    return account


@router.route(
    "POST",
    "/v1/numbers/import",
    summary="Import a number you own at a carrier",
    tag=TAG,
    body=NumberImport,
    response=NumberOut,
    status=201,
    errors=(400, 401, 403, 404, 409, 415, 422, 429, 502, 503),
)
async def import_number(ctx: Context, body: NumberImport) -> NumberOut:
    """The carrier must confirm that the account owns the number: Twilio lists it among the
    account's incoming phone numbers, Plivo answers ``GET Number/{number}/`` for the account
    (and the number is then pointed at the relay's Plivo webhooks, through an application);
    the sim carrier imports only from its own ranges. Not
    owned, or already imported by another project under the same account: 422
    ``number_not_owned``, the same answer either way."""
    phone = to_e164(body.phone_number, field="phoneNumber")
    if body.agent_id is not None:
        async with ctx.state.db.session() as session:
            await load_agent(ctx, session, body.agent_id)
    proof = await _prove(ctx, body, phone)
    if body.provider == "twilio" and body.configure_webhooks:
        await _configure(ctx, body.provider, proof, phone)
    number = Number(
        id=new_id("num"),
        project_id=ctx.project_id,
        phone_number=phone,
        country=region_of(phone),
        provider=body.provider,
        source="imported",
        credentials_ref=body.credentials_ref,
        provider_sid=proof.provider_sid or body.provider_sid,
        carrier_account_id=proof.account_id,
        carrier_key=proof.carrier_key,
        agent_id=body.agent_id,
        capabilities=list(proof.capabilities),
        created_at=utcnow(),
    )
    try:
        async with ctx.state.db.session() as session:
            if body.agent_id is not None:
                await load_agent(ctx, session, body.agent_id)
            session.add(number)
    except IntegrityError as exc:
        if await _project_has(ctx, proof.carrier_key, phone):
            raise Conflict(NUMBER_TAKEN, code="phone_number_taken", field="phoneNumber") from exc
        raise proof.not_owned() from None  # another project's: as if the account had none
    return _out(number)


@dataclass(frozen=True, slots=True)
class _Proof:
    carrier_key: str
    account_id: str | None
    provider_sid: str | None
    capabilities: tuple[str, ...]
    refusal: str

    def not_owned(self) -> APIError:
        return invalid_field("phoneNumber", self.refusal, "number_not_owned")


async def _prove(ctx: Context, body: NumberImport, phone: str) -> _Proof:
    """Which account the number is imported under, once its carrier confirmed it owns it."""
    account: CarrierAccount | None = None
    if body.carrier_account_id is not None:
        async with ctx.state.db.session() as session:
            try:
                account = await load_account(ctx, session, body.carrier_account_id)
            except NotFound as exc:
                raise NotFound(exc.message, field="carrierAccountId") from None
        if account.provider != body.provider:
            message = WRONG_PROVIDER.format(
                id=account.id, provider=account.provider, wanted=body.provider
            )
            raise invalid_field("carrierAccountId", message, "carrier_account_mismatch")
    if body.provider == "sim":
        ranges = "; ".join(f"{c} {r}" for c, r in SIM_RANGES.items())
        proof = _Proof(
            sim_key(ctx.project_id),
            account.id if account is not None else None,
            None,
            ("voice", "sms"),
            NOT_IN_SIM_RANGES.format(phone=phone, ranges=ranges),
        )
        if sim_country_of(phone) is None:
            raise proof.not_owned()
        return proof
    if body.provider == "telnyx":
        return await _prove_telnyx(ctx, account, phone)
    if body.provider == "plivo":
        return await _prove_plivo(ctx, account, phone)
    if body.provider != "twilio":
        raise invalid_field(
            "provider", NOT_VERIFIABLE.format(provider=body.provider), "provider_not_verifiable"
        )
    settings = ctx.state.settings
    if account is not None:
        creds = twilio_of(ctx, account)
        key, label = twilio_key(creds.account_sid), f"Carrier account {account.id}"
    elif settings.twilio_account_sid and settings.twilio_auth_token:
        creds = TwilioCredentials(settings.twilio_account_sid, settings.twilio_auth_token)
        key, label = TWILIO_DEPLOYMENT_KEY, "The relay's own Twilio account"
    else:
        raise invalid_field("carrierAccountId", NEEDS_ACCOUNT, "carrier_account_required")
    refusal = NOT_OWNED.format(account=label, phone=phone)
    try:
        owned = await TwilioAccounts(settings.twilio_api_base_url).owned_number(creds, phone)
    except CarrierError as exc:
        raise carrier_api_error(exc) from None
    if owned is None:
        raise invalid_field("phoneNumber", refusal, "number_not_owned")
    return _Proof(
        key,
        account.id if account is not None else None,
        owned.provider_sid or None,
        owned.capabilities,
        refusal,
    )


async def _configure(ctx: Context, provider: str, proof: _Proof, phone: str) -> None:
    """Point the number's webhooks at this relay before it is stored (a carrier that refuses
    leaves nothing stored)."""
    account = None
    if proof.account_id is not None:
        async with ctx.state.db.session() as session:
            account = await load_account(ctx, session, proof.account_id)
    public_url = ctx.state.settings.effective_public_url()
    async with carrier_of(ctx, provider, account) as (carrier, _key):
        try:
            await carrier.configure(phone, proof.provider_sid, public_url)
        except CarrierError as exc:
            raise carrier_error(exc) from exc


async def _prove_telnyx(ctx: Context, account: CarrierAccount | None, phone: str) -> _Proof:
    """Telnyx lists the number among the account's own (``GET /v2/phone_numbers``); it is
    then assigned to the account's application and messaging profile."""
    if account is None:
        raise invalid_field("carrierAccountId", NEEDS_TELNYX_ACCOUNT, "carrier_account_required")
    try:
        creds = telnyx_credentials(ctx.state.secret_box, account)
    except SecretBoxError as exc:
        raise secret_box_error(exc) from None
    refusal = NOT_OWNED.format(account=f"Carrier account {account.id}", phone=phone)
    try:
        owned = await TelnyxAccounts(ctx.state.settings.telnyx_api_base_url).owned_number(
            creds, phone
        )
    except CarrierError as exc:
        raise carrier_api_error(exc) from None
    if owned is None:
        raise invalid_field("phoneNumber", refusal, "number_not_owned")
    # Its calls and texts now reach the relay, before the number is stored.
    carrier = TelnyxCarrier(creds, api_base_url=ctx.state.settings.telnyx_api_base_url)
    try:
        await carrier.configure(phone, owned.provider_sid or None, "")
    except CarrierError as exc:
        raise carrier_api_error(exc) from None
    finally:
        await carrier.close()
    key = telnyx_key(creds.connection_id)
    return _Proof(key, account.id, owned.provider_sid or None, owned.capabilities, refusal)


async def _prove_plivo(ctx: Context, account: CarrierAccount | None, phone: str) -> _Proof:
    """Plivo's ``GET Number/{number}/`` answers only for a number the account rents."""
    if account is None:
        raise invalid_field("carrierAccountId", PLIVO_NEEDS_ACCOUNT, "carrier_account_required")
    creds = plivo_of(ctx, account)
    refusal = NOT_OWNED.format(account=f"Carrier account {account.id}", phone=phone)
    public = ctx.state.settings.effective_public_url()
    rest = PlivoRest(creds, ctx.state.settings.plivo_api_base_url)
    try:
        owned = await rest.owned_number(phone)
        if owned is None:
            raise invalid_field("phoneNumber", refusal, "number_not_owned")
        # The number's webhooks at Plivo, named by the account's auth id (whose token signs).
        query = f"?authId={creds.auth_id}"
        await rest.point_number(phone, f"{public}{VOICE_PATH}{query}", f"{public}{SMS_PATH}{query}")
    except CarrierError as exc:
        raise carrier_api_error(exc) from None
    finally:
        await rest.close()
    return _Proof(plivo_key(creds.auth_id), account.id, None, owned.capabilities, refusal)


async def _project_has(ctx: Context, carrier_key: str, phone: str) -> bool:
    async with ctx.state.db.session() as session:
        found = await session.execute(
            select(Number.id).where(
                Number.project_id == ctx.project_id,
                Number.carrier_key == carrier_key,
                Number.phone_number == phone,
                Number.released_at.is_(None),
            )
        )
        return found.first() is not None


@router.route(
    "GET",
    "/v1/numbers",
    summary="List numbers",
    tag=TAG,
    query=NumberQuery,
    response=Page[NumberOut],
    errors=(401, 403, 422, 429),
)
async def list_numbers(ctx: Context, query: NumberQuery) -> Page[NumberOut]:
    stmt = select(Number).where(Number.project_id == ctx.project_id, Number.released_at.is_(None))
    if query.agent_id:
        stmt = stmt.where(Number.agent_id == query.agent_id)
    stmt = newest_first(stmt, Number.id, query)
    async with ctx.state.db.session() as session:
        window = await fetch_page(session, stmt, query)
    return window.page(Page[NumberOut], _out)


@router.route(
    "GET",
    "/v1/numbers/{number_id}",
    summary="Get a number",
    tag=TAG,
    response=NumberOut,
    errors=(401, 403, 404, 429),
)
async def get_number(ctx: Context) -> NumberOut:
    async with ctx.state.db.session() as session:
        return _out(await _load(ctx, session, ctx.path("number_id")))


@router.route(
    "PATCH",
    "/v1/numbers/{number_id}",
    summary="Bind or unbind an agent",
    tag=TAG,
    body=NumberUpdate,
    response=NumberOut,
    errors=(400, 401, 403, 404, 415, 422, 429),
)
async def update_number(ctx: Context, body: NumberUpdate) -> NumberOut:
    """A number answers for at most one agent; binding it to another moves it."""
    async with ctx.state.db.session() as session:
        number = await _load(ctx, session, ctx.path("number_id"))
        if body.agent_id is not None:
            await load_agent(ctx, session, body.agent_id)
        number.agent_id = body.agent_id
        return _out(number)


@router.route(
    "DELETE",
    "/v1/numbers/{number_id}",
    summary="Release a number",
    tag=TAG,
    response=Deleted,
    errors=(401, 403, 404, 429, 502),
)
async def release_number(ctx: Context) -> Deleted:
    """Provisioned numbers go back to their carrier; imported ones are only forgotten."""
    async with ctx.state.db.session() as session:
        number = await _load(ctx, session, ctx.path("number_id"))
        account = None
        if number.carrier_account_id is not None:
            account = await session.get(CarrierAccount, number.carrier_account_id)
        if number.source == "provisioned" and ctx.state.carriers.get(number.provider) is not None:
            async with carrier_of(ctx, number.provider, account) as (carrier, _key):
                try:
                    await carrier.release(number.phone_number, number.provider_sid)
                except CarrierError as exc:
                    raise carrier_error(exc) from exc
        number.released_at = utcnow()
        number.agent_id = None
    return Deleted(id=number.id, object="number")
