"""``/v1/dnc``: the project's do-not-contact list (:mod:`sms.dnc`).

Every outbound call and text checks it in the transaction that creates it: a number the
project listed answers ``409 dnc_conflict``, a number that texted STOP ``403
compliance_block``. The list shows both; the project removes only what it listed.

    POST   /v1/dnc                   add numbers (up to 1,000), with a reason and a source
    POST   /v1/dnc/import            add the numbers of a CSV file (up to 50,000 rows)
    GET    /v1/dnc                   the list, newest first (``phoneNumber=`` looks one up)
    GET    /v1/dnc/{phone_number}    one entry
    DELETE /v1/dnc/{phone_number}    take a number the project listed off the list
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field
from sqlalchemy import select

from relay.api.pagination import fetch_page, newest_first
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, OutModel, Page, PageQuery
from relay.errors import Conflict, NotFound, invalid_field
from relay.phone import query_e164, to_e164
from relay.store.models import OptOut
from sms import dnc

router = Router()
TAG = "Do not contact"
NOT_LISTED = "{number} is not on this project's do-not-contact list."
LISTED_BY_RECIPIENT = "{number} texted STOP: only the recipient can lift that, by texting START."
Reason = Annotated[str, Field(max_length=200, description="Why the number is listed.")]
Source = Annotated[
    str, Field(max_length=100, description="Where the listing came from (a label of yours).")
]


class DncAdd(APIModel):
    numbers: list[Annotated[str, Field(max_length=40)]] = Field(
        min_length=1, max_length=1000, description="E.164 numbers to list."
    )
    reason: Reason | None = None
    source: Source | None = None


class DncImport(APIModel):
    csv: str = Field(
        min_length=1,
        description=(
            "The file's text: the first column the number (E.164), an optional second "
            "column the reason; a first line naming the columns is skipped."
        ),
    )
    reason: Reason | None = Field(default=None, description="For rows without a reason.")
    source: Source | None = "csv"


class InvalidRow(OutModel):
    index: int = Field(description="Index in `numbers` (from 0), or the CSV line (from 1).")
    value: str
    code: str
    message: str


class DncSummary(OutModel):
    object: Literal["dnc_listing"] = "dnc_listing"
    added: int = Field(description="Numbers newly on the list.")
    already_listed: int = Field(description="Numbers that were on it already.")
    duplicates: int = Field(description="Numbers given again in the same request.")
    invalid_count: int
    invalid: list[InvalidRow] = Field(description="The first 100 rows that listed nothing.")


class DncEntry(OutModel):
    id: str
    object: Literal["dnc_entry"] = "dnc_entry"
    phone_number: str
    listed_by: Literal["project", "recipient"] = Field(
        description="`recipient`: it texted STOP (only its START lifts that)."
    )
    reason: str | None
    source: str | None
    keyword: str | None = Field(description="The opt-out word it texted, if it did.")
    listed_at: datetime


class DncQuery(PageQuery):
    phone_number: str | None = Field(
        default=None, max_length=40, description="Look one up (E.164)."
    )


def _out(row: OptOut) -> DncEntry:
    return DncEntry(
        id=row.id,
        phone_number=row.phone_number,
        listed_by="project" if row.listed_by == dnc.LISTED_BY_PROJECT else "recipient",
        reason=row.reason,
        source=row.source,
        keyword=row.keyword,
        listed_at=row.opted_out_at,
    )


def _summary(listing: dnc.Listing) -> DncSummary:
    return DncSummary(
        added=listing.added,
        already_listed=listing.already_listed,
        duplicates=listing.duplicates,
        invalid_count=listing.invalid_count,
        invalid=[InvalidRow(**vars_of(i)) for i in listing.invalid],
    )


def vars_of(row: dnc.Invalid) -> dict[str, object]:
    return {"index": row.index, "value": row.value, "code": row.code, "message": row.message}


@router.route(
    "POST",
    "/v1/dnc",
    summary="Add numbers to the do-not-contact list",
    tag=TAG,
    body=DncAdd,
    response=DncSummary,
    errors=(400, 401, 403, 413, 415, 422, 429),
)
async def add_numbers(ctx: Context, body: DncAdd) -> DncSummary:
    """From now on no call or text of the project reaches these numbers (``409
    dnc_conflict``). Invalid numbers are reported in ``invalid`` and the rest are listed."""
    rows = [(i, number, body.reason) for i, number in enumerate(body.numbers)]
    async with ctx.state.db.session() as session:
        listing = await dnc.add(session, ctx.project_id, rows, source=body.source or "api")
    return _summary(listing)


@router.route(
    "POST",
    "/v1/dnc/import",
    summary="Import a CSV file into the do-not-contact list",
    tag=TAG,
    body=DncImport,
    response=DncSummary,
    errors=(400, 401, 403, 413, 415, 422, 429),
)
async def import_csv(ctx: Context, body: DncImport) -> DncSummary:
    """The file's text in ``csv`` (a JSON string, so the body is JSON like every other, up
    to 1 MiB: some 50,000 numbers). Each row is added as by ``POST /v1/dnc``; ``index`` of
    an invalid row is its line."""
    try:
        rows = dnc.read_csv(body.csv, body.reason)
    except ValueError as exc:
        raise invalid_field("csv", str(exc), "invalid_csv") from exc
    async with ctx.state.db.session() as session:
        listing = await dnc.add(session, ctx.project_id, rows, source=body.source)
    return _summary(listing)


@router.route(
    "GET",
    "/v1/dnc",
    summary="List the do-not-contact list",
    tag=TAG,
    query=DncQuery,
    response=Page[DncEntry],
    errors=(401, 403, 422, 429),
)
async def list_entries(ctx: Context, query: DncQuery) -> Page[DncEntry]:
    """Newest first: the numbers the project listed and those that texted STOP."""
    stmt = select(OptOut).where(OptOut.project_id == ctx.project_id, OptOut.opted_in_at.is_(None))
    if query.phone_number is not None:
        number = query_e164(query.phone_number, field="phoneNumber")
        stmt = stmt.where(OptOut.phone_number == number)
    stmt = newest_first(stmt, OptOut.id, query)
    async with ctx.state.db.session() as session:
        window = await fetch_page(session, stmt, query)
    return window.page(Page[DncEntry], _out)


def _number(ctx: Context) -> str:
    return to_e164(ctx.path("phone_number"), field="phone_number")


@router.route(
    "GET",
    "/v1/dnc/{phone_number}",
    summary="Look up a number on the do-not-contact list",
    tag=TAG,
    response=DncEntry,
    errors=(401, 403, 404, 422, 429),
)
async def get_entry(ctx: Context) -> DncEntry:
    """404 ``not_listed`` when nothing keeps the project from contacting the number."""
    number = _number(ctx)
    async with ctx.state.db.session() as session:
        row = await dnc.entry(session, ctx.project_id, number)
    if row is None:
        raise NotFound(NOT_LISTED.format(number=number), code="not_listed")
    return _out(row)


@router.route(
    "DELETE",
    "/v1/dnc/{phone_number}",
    summary="Remove a number from the do-not-contact list",
    tag=TAG,
    status=204,
    errors=(401, 403, 404, 409, 422, 429),
)
async def remove_entry(ctx: Context) -> None:
    """The project may contact the number again. A number that texted STOP answers ``409
    listed_by_recipient``: only the recipient lifts that, by texting START."""
    number = _number(ctx)
    async with ctx.state.db.session() as session:
        try:
            removed = await dnc.remove(session, ctx.project_id, number)
        except dnc.ListedByRecipient as exc:
            raise Conflict(
                LISTED_BY_RECIPIENT.format(number=number), code="listed_by_recipient"
            ) from exc
    if not removed:
        raise NotFound(NOT_LISTED.format(number=number), code="not_listed")
