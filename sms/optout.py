"""Opt-out compliance: STOP and its synonyms, START to come back, HELP.

A keyword counts when it is the whole text (any case, surrounding spaces and a final ``.`` or
``!`` ignored), the way carriers match them. An opted-out number gets no text and no call
from the project until it texts START or UNSTOP. :func:`is_opted_out` is the one check every
outbound path (texts here, calls in the Calls API) makes before it contacts a number.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import BindParameter, Exists, Table, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relay.errors import Conflict, Forbidden
from relay.ids import new_id
from relay.store.models import OptOut, utcnow
from sms.store import upsert

Keyword = Literal["stop", "start", "help"]

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "UNSTOP"})
HELP_WORDS = frozenset({"HELP"})

STOP_CONFIRMATION = (
    "You have been unsubscribed and will receive no more messages from this number. "
    "Reply START to resubscribe."
)
START_CONFIRMATION = "You have been resubscribed. Reply STOP to unsubscribe."
DEFAULT_HELP = "Reply STOP to unsubscribe, START to resubscribe. Msg & data rates may apply."
OPTED_OUT = (
    "{number} has opted out of texts and calls from this project (it replied STOP); "
    "it can opt back in by texting START."
)
ON_DNC_LIST = (
    "{number} is on this project's do-not-contact list; remove it there "
    "(DELETE /v1/dnc/{number}) to contact it again."
)
COMPLIANCE_BLOCK = "compliance_block"
DNC_CONFLICT = "dnc_conflict"
REASON_OPTED_OUT = "opted_out"
# Who put a number on the list: only what the recipient's STOP listed, START lifts.
LISTED_BY_RECIPIENT = "recipient"
LISTED_BY_PROJECT = "project"


def keyword_of(text: str) -> Keyword | None:
    word = text.strip().rstrip(".!").strip().upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None


def opted_out(project_id: str | BindParameter[str], number: str | BindParameter[str]) -> Exists:
    """SQL: ``number`` has opted out of the project (to use inside a larger query; values,
    or parameters for a statement built once)."""
    return exists().where(
        OptOut.project_id == project_id,
        OptOut.phone_number == number,
        OptOut.opted_in_at.is_(None),
    )


async def is_opted_out(session: AsyncSession, project_id: str, number: str) -> bool:
    """Whether ``number`` (E.164) has opted out of the project's texts and calls."""
    return bool((await session.execute(select(opted_out(project_id, number)))).scalar())


async def refuse_if_opted_out(session: AsyncSession, project_id: str, number: str) -> None:
    """What every outbound text and call checks, in the transaction that creates it, before
    it contacts a number: ``403 compliance_block`` (reason ``opted_out``, field ``to``) if
    the number texted STOP, ``409 dnc_conflict`` if the project put it on its do-not-contact
    list."""
    listed_by = (
        await session.execute(
            select(OptOut.listed_by).where(
                OptOut.project_id == project_id,
                OptOut.phone_number == number,
                OptOut.opted_in_at.is_(None),
            )
        )
    ).scalar_one_or_none()
    if listed_by is None:
        return
    if listed_by == LISTED_BY_PROJECT:
        message = ON_DNC_LIST.format(number=number)
        raise Conflict(message, code=DNC_CONFLICT, field="to")
    message = OPTED_OUT.format(number=number)
    raise Forbidden(
        message,
        code=COMPLIANCE_BLOCK,
        field="to",
        details=[{"field": "to", "code": REASON_OPTED_OUT, "message": message}],
    )


async def opt_out(
    session: AsyncSession, project_id: str, number: str, *, keyword: str, our_number: str | None
) -> None:
    now = utcnow()
    table = OptOut.__table__
    assert isinstance(table, Table)
    changes = {"keyword": keyword, "our_number": our_number, "opted_out_at": now}
    await session.execute(
        upsert(
            session,
            table,
            {"id": new_id("opt"), "project_id": project_id, "phone_number": number, **changes},
            ["project_id", "phone_number"],
            update_columns={**changes, "opted_in_at": None},
        )
    )


async def opt_in(session: AsyncSession, project_id: str, number: str) -> None:
    """START: lifts the number's STOP, never a listing the project made itself."""
    await session.execute(
        update(OptOut)
        .where(
            OptOut.project_id == project_id,
            OptOut.phone_number == number,
            OptOut.opted_in_at.is_(None),
            OptOut.listed_by == LISTED_BY_RECIPIENT,
        )
        .values(opted_in_at=utcnow())
    )


__all__ = [
    "COMPLIANCE_BLOCK",
    "DEFAULT_HELP",
    "DNC_CONFLICT",
    "LISTED_BY_PROJECT",
    "LISTED_BY_RECIPIENT",
    "REASON_OPTED_OUT",
    "START_CONFIRMATION",
    "STOP_CONFIRMATION",
    "is_opted_out",
    "keyword_of",
    "opt_in",
    "opt_out",
    "opted_out",
    "refuse_if_opted_out",
]
