"""The do-not-contact list a project keeps itself: numbers it adds through the API, a batch
at a time or from a CSV file, and removes again.

Its entries live beside the STOP opt-outs (:class:`relay.store.models.OptOut`, ``listed_by``
``project``), so the one check every outbound text and call makes
(:func:`sms.optout.refuse_if_opted_out`) covers both. What the recipient listed by texting
STOP only their START lifts: the project cannot remove it, and adding a number that texted
STOP makes it the project's listing too (START no longer lifts it).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from sqlalchemy import Table, case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

from relay.ids import new_id
from relay.phone import e164_or_none
from relay.store.models import OptOut, utcnow
from sms.optout import LISTED_BY_PROJECT, LISTED_BY_RECIPIENT

MAX_CSV_ROWS = 50_000
MAX_REPORTED_INVALID = 100
# Rows per INSERT: 6 values each, far under SQLite's limit of bound parameters.
_CHUNK = 500
_HEADER_WORDS = frozenset({"phone", "phone_number", "phonenumber", "number", "to", "e164"})
NOT_E164 = "Not an E.164 phone number (like +14155550123)."
TOO_MANY_ROWS = f"The file has more than {MAX_CSV_ROWS} rows; split it."


@dataclass(frozen=True, slots=True)
class Invalid:
    """A row that listed nothing: where it was (``index`` of ``numbers``, or the CSV line
    number from 1), what it held, and why."""

    index: int
    value: str
    code: str
    message: str


@dataclass(slots=True)
class Listing:
    """What adding numbers did."""

    added: int = 0
    already_listed: int = 0
    duplicates: int = 0  # the same number again in the same request
    invalid_count: int = 0
    invalid: list[Invalid] = field(default_factory=list)

    def refuse(self, index: int, value: str, code: str, message: str) -> None:
        self.invalid_count += 1
        if len(self.invalid) < MAX_REPORTED_INVALID:
            self.invalid.append(Invalid(index, value[:64], code, message))


def read_csv(text: str, default_reason: str | None) -> list[tuple[int, str, str | None]]:
    """The CSV's rows as (line, number as written, reason): the first column is the number,
    a second one, if any, the reason; a first line naming the columns is skipped. Rows that
    hold no number at all are reported as invalid; blank lines are skipped."""
    rows: list[tuple[int, str, str | None]] = []
    reader = csv.reader(io.StringIO(text))
    try:
        for line, cells in enumerate(reader, start=1):
            if not cells or not any(c.strip() for c in cells):
                continue
            first = cells[0].strip()
            if line == 1 and first.lower().replace(" ", "_") in _HEADER_WORDS:
                continue
            if len(rows) >= MAX_CSV_ROWS:
                raise ValueError(TOO_MANY_ROWS)
            reason = cells[1].strip()[:200] if len(cells) > 1 and cells[1].strip() else None
            rows.append((line, first, reason or default_reason))
    except csv.Error as exc:
        raise ValueError(f"Not a CSV file: {exc} (line {reader.line_num}).") from exc
    return rows


async def add(
    session: AsyncSession,
    project_id: str,
    rows: list[tuple[int, str, str | None]],
    *,
    source: str | None,
    listing: Listing | None = None,
) -> Listing:
    """List each row's number (``(index, number as written, reason)``) for the project.
    Invalid numbers are reported, not stored; a number already on the list is counted as
    such and takes this request's reason and source."""
    listing = listing if listing is not None else Listing()
    wanted: dict[str, str | None] = {}
    for index, written, reason in rows:
        number = e164_or_none(written.strip())
        if number is None:
            listing.refuse(index, written, "invalid_phone_number", NOT_E164)
        elif number in wanted:
            listing.duplicates += 1
        else:
            wanted[number] = reason
    numbers = list(wanted)
    for start in range(0, len(numbers), _CHUNK):
        chunk = numbers[start : start + _CHUNK]
        active = set(
            (
                await session.execute(
                    select(OptOut.phone_number).where(
                        OptOut.project_id == project_id,
                        OptOut.phone_number.in_(chunk),
                        OptOut.opted_in_at.is_(None),
                    )
                )
            ).scalars()
        )
        listing.already_listed += len(active)
        listing.added += len(chunk) - len(active)
        await session.execute(_upsert(session, project_id, chunk, wanted, source))
    return listing


def _upsert(
    session: AsyncSession,
    project_id: str,
    numbers: list[str],
    reasons: dict[str, str | None],
    source: str | None,
) -> Executable:
    table = OptOut.__table__
    assert isinstance(table, Table)
    now = utcnow()
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table).values(
        [
            {
                "id": new_id("opt"),
                "project_id": project_id,
                "phone_number": number,
                "listed_by": LISTED_BY_PROJECT,
                "reason": reasons[number],
                "source": source,
                "opted_out_at": now,
            }
            for number in numbers
        ]
    )
    # An entry still in force keeps when it was listed; one lifted before is listed anew.
    return stmt.on_conflict_do_update(
        index_elements=["project_id", "phone_number"],
        set_={
            "listed_by": LISTED_BY_PROJECT,
            "reason": stmt.excluded.reason,
            "source": stmt.excluded.source,
            "opted_out_at": case(
                (table.c.opted_in_at.is_(None), table.c.opted_out_at),
                else_=stmt.excluded.opted_out_at,
            ),
            "opted_in_at": None,
        },
    )


async def entry(session: AsyncSession, project_id: str, number: str) -> OptOut | None:
    """The number's entry while it is on the list (by STOP or by the project)."""
    row: OptOut | None = (
        await session.execute(
            select(OptOut).where(
                OptOut.project_id == project_id,
                OptOut.phone_number == number,
                OptOut.opted_in_at.is_(None),
            )
        )
    ).scalar_one_or_none()
    return row


class ListedByRecipient(Exception):
    """Only the recipient's START lifts what their STOP listed."""


async def remove(session: AsyncSession, project_id: str, number: str) -> bool:
    """Take a number the project listed off the list; False if it was not on it. A number
    listed by the recipient's STOP raises :class:`ListedByRecipient`."""
    found = await entry(session, project_id, number)
    if found is None:
        return False
    if found.listed_by == LISTED_BY_RECIPIENT:
        raise ListedByRecipient(number)
    await session.execute(delete(OptOut).where(OptOut.id == found.id))
    return True


__all__ = [
    "LISTED_BY_PROJECT",
    "LISTED_BY_RECIPIENT",
    "MAX_CSV_ROWS",
    "Invalid",
    "ListedByRecipient",
    "Listing",
    "add",
    "entry",
    "read_csv",
    "remove",
]
