"""Cursor pagination for every list the API answers: one cursor, one way to cut a page.

A cursor is the id of the last row of the page before, base64url without padding: opaque to
clients (they pass ``nextCursor`` back as ``cursor``) and cheap to check. A cursor this API
did not give out is 422 ``invalid_cursor`` on ``cursor``.

Most lists are newest first by id (ids are time-ordered): :func:`newest_first`. Ids alone do
not order rows written in the same millisecond, so a list that must keep writing order (a
call's events, an endpoint's deliveries) orders by a time and then a tie-breaker, and resumes
after the row its cursor names: :func:`cursor_row` then :func:`keyset`. Either way
:func:`fetch_page` reads one row more than the page, to know whether another page follows.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql import Select

from relay.api.schema import Page, PageQuery
from relay.errors import ValidationFailed, invalid_field

NOT_A_CURSOR = "Not a cursor this API gave out."


class HasId(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=HasId)
T = TypeVar("T")


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str | None:
    """The id a cursor points after, or None when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return raw if raw.isascii() and "_" in raw and len(raw) <= 60 else None


def bad_cursor() -> ValidationFailed:
    return invalid_field("cursor", NOT_A_CURSOR, "invalid_cursor")


def after_id(cursor: str | None) -> str | None:
    """The id ``cursor`` points after (None: the first page); 422 if it is not ours."""
    if cursor is None:
        return None
    after = decode_cursor(cursor)
    if after is None:
        raise bad_cursor()
    return after


def newest_first(
    stmt: Select[R], id_column: InstrumentedAttribute[str], query: PageQuery
) -> Select[R]:
    """``stmt`` newest first by id, from the row after ``query.cursor``'s."""
    after = after_id(query.cursor)
    if after is not None:
        stmt = stmt.where(id_column < after)
    return stmt.order_by(id_column.desc())


async def cursor_row(
    session: AsyncSession, model: type[R], cursor: str | None, belongs: Callable[[R], bool]
) -> R | None:
    """The row ``cursor`` names (None: the first page); 422 if it is not ours, no longer
    stored, or not of the list being read (``belongs`` says so)."""
    after = after_id(cursor)
    if after is None:
        return None
    mark = await session.get(model, after)
    if mark is None or not belongs(mark):
        raise bad_cursor()
    return mark


def keyset(
    stmt: Select[R],
    order: tuple[InstrumentedAttribute[Any], InstrumentedAttribute[Any]],
    mark: R | None,
    *,
    descending: bool,
) -> Select[R]:
    """``stmt`` ordered by ``order`` (a time, then a tie-breaker), from the row after ``mark``
    (a row of the same model, from :func:`cursor_row`)."""
    when, tie = order
    if mark is not None:
        at, last = getattr(mark, when.key), getattr(mark, tie.key)
        if descending:
            stmt = stmt.where(or_(when < at, and_(when == at, tie < last)))
        else:
            stmt = stmt.where(or_(when > at, and_(when == at, tie > last)))
    return stmt.order_by(when.desc(), tie.desc()) if descending else stmt.order_by(when, tie)


@dataclass(frozen=True, slots=True)
class Window(Generic[R]):
    """The rows of one page, and whether more follow."""

    rows: list[R]
    more: bool

    def page(self, kind: type[Page[T]], out: Callable[[R], T]) -> Page[T]:
        """The page as the API answers it (``kind``: ``Page[TheOutModel]``)."""
        return kind(
            data=[out(row) for row in self.rows],
            has_more=self.more,
            next_cursor=encode_cursor(self.rows[-1].id) if self.more else None,
        )


async def fetch_page(session: AsyncSession, stmt: Select[R], query: PageQuery) -> Window[R]:
    """Read ``stmt`` (ordered, from the cursor on) for one page of ``query.limit`` rows."""
    rows = list((await session.execute(stmt.limit(query.limit + 1))).scalars())
    return Window(rows[: query.limit], len(rows) > query.limit)
