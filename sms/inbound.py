"""Inbound texts: stored first, answered later.

:func:`receive` is what every carrier's inbound webhook calls. In ONE transaction it finds
(or starts) the conversation, takes the text's place in it, stores the text as pending work
and emits ``message.received``; only then is the conversation's worker woken. The carrier
gets its answer as soon as that commit is done: the webhook turn happens afterwards, so a
slow agent never makes a carrier retry. A carrier's retry of a text already stored (same
carrier message id) is recognised and changes nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from relay.carriers.sms import IncomingText
from relay.events import emit
from relay.ids import new_id
from relay.logs import get_logger
from relay.store import Database, insert_at_commit
from relay.store.models import Message, Number, utcnow
from relay_numbers.routing import number_for_inbound
from sms.outbound import message_payload
from sms.queue import ConversationQueues
from sms.segmentation import segment
from sms.store import SmsRow, message_of, message_row, messages, next_seq
from sms.worker import TurnInputs, read_turn

log = get_logger("sms.inbound")


class Receiving(Protocol):
    """What receiving texts uses of the process's :class:`sms.service.SmsService`."""

    db: Database
    queues: ConversationQueues[SmsRow]
    read_ahead: dict[str, TurnInputs]
    node_id: str

    @property
    def claims_on_receipt(self) -> bool: ...
    def may_read_ahead(self, conversation_id: str, message_id: str) -> bool: ...
    def done_reading_ahead(self, conversation_id: str | None, message_id: str) -> None: ...
    def expect_replies(self, message_id: str) -> asyncio.Future[list[SmsRow]]: ...
    def received(self, message_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Receipt:
    """``message_id`` is None when no active number has the ``to`` value."""

    message_id: str | None
    conversation_id: str | None
    duplicate: bool = False
    replies: asyncio.Future[list[SmsRow]] | None = None


async def _stored(
    svc: Receiving, incoming: IncomingText, carrier_key: str
) -> tuple[str, str] | None:
    # Within the carrier account only: another account's text with the same id is not ours.
    async with svc.db.session() as session:
        row = (
            await session.execute(
                select(Message.id, Message.conversation_id).where(
                    Message.carrier_key == carrier_key,
                    Message.carrier_message_id == incoming.carrier_message_id,
                )
            )
        ).first()
    return (row[0], row[1]) if row else None


async def receive(
    svc: Receiving,
    incoming: IncomingText,
    *,
    number: Number | None = None,
    carrier_keys: tuple[str, ...] = (),
    wait: bool = False,
) -> Receipt:
    """Store ``incoming`` and queue its answer: to ``number``, or to the number it was sent
    to under the first of ``carrier_keys`` (the accounts the carrier's request names).
    ``wait``: the receipt carries a future that resolves to the replies once they are
    handed to the carrier."""
    number = number or await number_for_inbound(svc.db, incoming.to_number, carrier_keys)
    if number is None:
        log.warning("sms_for_unknown_number", to=incoming.to_number, provider=incoming.provider)
        return Receipt(None, None)
    now = utcnow()
    seg = segment(incoming.text)
    values = message_row(
        id=new_id("msg"),
        project_id=number.project_id,
        number_id=number.id,
        agent_id=number.agent_id,
        direction="inbound",
        from_number=incoming.from_number,
        to_number=number.phone_number,
        text=incoming.text,
        media=list(incoming.media) or None,
        status="received",
        provider=incoming.provider,
        carrier_key=number.carrier_key,
        carrier_message_id=incoming.carrier_message_id,
        keyword_handled=incoming.keyword_handled,
        segments=seg.count,
        encoding=seg.encoding,
        work="claimed" if svc.claims_on_receipt else "pending",
        claimed_at=now if svc.claims_on_receipt else None,
        claimed_by=svc.node_id if svc.claims_on_receipt else None,
        created_at=now,
        updated_at=now,
    )
    msg = message_of(values)
    ahead: list[TurnInputs] = []

    async def store(session: AsyncSession) -> None:
        msg.conversation_id, msg.seq, _ = await next_seq(
            session,
            project_id=number.project_id,
            our_number=number.phone_number,
            their_number=incoming.from_number,
            number_id=number.id,
            agent_id=number.agent_id,
            now=now,
        )
        insert_at_commit(
            session, messages, values | {"conversation_id": msg.conversation_id, "seq": msg.seq}
        )
        await emit(
            session,
            project_id=msg.project_id,
            type="message.received",
            data=message_payload(msg),
            ordering_key=msg.conversation_id,
        )
        ahead.clear()
        if svc.may_read_ahead(msg.conversation_id, msg.id):
            try:
                ahead.append(await read_turn(session, msg, svc.db))
            except Exception:  # never in the way of storing the text: its worker reads again
                log.exception("sms_read_ahead_failed", message_id=msg.id)

    try:
        try:
            await svc.db.write(store)
        except IntegrityError:
            # The carrier delivered this text before (a retry): the unique carrier id refused
            # it, and the rollback took the seq back too.
            found = await _stored(svc, incoming, number.carrier_key)
            if found is None:
                raise
            return Receipt(found[0], found[1], duplicate=True)
        replies = svc.expect_replies(msg.id) if wait else None
        svc.received(msg.id)
        if ahead:
            svc.read_ahead[msg.id] = ahead[0]
        if svc.claims_on_receipt:
            svc.queues.push(msg.conversation_id, msg)
        else:
            svc.queues.notify(msg.conversation_id)
        return Receipt(msg.id, msg.conversation_id, replies=replies)
    finally:
        svc.done_reading_ahead(msg.conversation_id, msg.id)
