"""Outbound texts: store one, hand it to its number's carrier, follow its delivery status.

A text is stored ``queued`` before the carrier sees it (so a crash between the two loses
nothing: the restart sends it), then moves forward only:

    queued -> sent -> delivered
        \\------\\---> failed

Each step is one conditional UPDATE, so a carrier's status report racing our own update
(Twilio can call back before ``create`` has returned) can neither move a text backwards nor
emit an event twice. ``message.sent`` / ``.delivered`` / ``.failed`` are emitted in the same
transaction as the step they report.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

from sqlalchemy import String, bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from relay.carriers import Carrier, CarrierError
from relay.carriers.sms import DeliveryStatus, OutgoingText, SentText
from relay.events import emit
from relay.ids import new_id
from relay.logs import get_logger
from relay.store import Database, Prepared, insert_at_commit
from relay.store.models import Message, MessageEvent, utcnow
from relay.timefmt import iso
from sms.segmentation import segment
from sms.store import SmsRow, message_row, table_of

log = get_logger("sms.outbound")

# The earlier statuses each status may be reached from, nearest first.
STEPS: dict[str, tuple[str, ...]] = {
    "sent": ("queued",),
    "delivered": ("sent", "queued"),
    "failed": ("sent", "queued"),
}
NO_CARRIER = "This relay has no SMS carrier {name!r}."


class TextCarrier(Protocol):
    async def send_sms(self, text: OutgoingText) -> SentText: ...


class Sending(Protocol):
    """What handing texts to carriers uses of the process's :class:`sms.service.SmsService`."""

    db: Database
    carriers: dict[str, Carrier]
    node_id: str  # what this process's claims name (RELAY_NODE_ID)

    def status_callback_url(self, msg: SmsRow) -> str | None: ...
    async def carrier_for(self, msg: SmsRow) -> TextCarrier | None: ...


def message_payload(msg: SmsRow) -> dict[str, Any]:
    """What lifecycle webhooks say about a text."""
    return {
        "messageId": msg.id,
        "conversationId": msg.conversation_id,
        "agentId": msg.agent_id,
        "numberId": msg.number_id,
        "direction": msg.direction,
        "from": msg.from_number,
        "to": msg.to_number,
        "text": msg.text,
        "media": msg.media,
        "status": msg.status,
        "segments": msg.segments,
        "errorCode": msg.error_code,
        "errorMessage": msg.error_message,
        "inReplyTo": msg.in_reply_to,
        "createdAt": iso(msg.created_at),
    }


def outbound_row(
    *,
    project_id: str,
    conversation_id: str,
    seq: int,
    number_id: str | None,
    agent_id: str | None,
    provider: str,
    carrier_key: str | None,
    from_number: str,
    to_number: str,
    text: str,
    in_reply_to: str | None = None,
    claimed_by: str,
) -> dict[str, Any]:
    """A ``queued`` text's row, claimed by the caller, node ``claimed_by`` (who delivers it
    right after committing)."""
    now = utcnow()
    seg = segment(text)
    return message_row(
        id=new_id("msg"),
        project_id=project_id,
        conversation_id=conversation_id,
        seq=seq,
        agent_id=agent_id,
        number_id=number_id,
        direction="outbound",
        from_number=from_number,
        to_number=to_number,
        text=text,
        status="queued",
        provider=provider,
        carrier_key=carrier_key,
        in_reply_to=in_reply_to,
        segments=seg.count,
        encoding=seg.encoding,
        work="claimed",
        claimed_at=now,
        claimed_by=claimed_by,
        created_at=now,
        updated_at=now,
    )


async def set_status(
    session: AsyncSession,
    msg: SmsRow,
    status: DeliveryStatus,
    **values: Any,
) -> bool:
    """Move ``msg`` forward to ``status`` (with ``values``) and emit what it passed through.
    ``values`` are stored even when the status does not move. Returns whether it moved."""
    now = utcnow()
    stamps: dict[str, Any] = {"updated_at": now}
    if status in ("sent", "delivered"):
        stamps["sent_at"] = msg.sent_at or now
    if status == "delivered":
        stamps["delivered_at"] = now
    steps = STEPS.get(status, ())
    # The status we last saw first: usually right, and then one UPDATE does it.
    steps = tuple(sorted(steps, key=lambda before: before != msg.status))
    changes = {**stamps, **values}
    for before in steps:
        moved = await _status_step(tuple(changes)).rowcount(
            session,
            {"b_id": msg.id, "b_before": before, "b_status": status}
            | {f"v_{name}": value for name, value in changes.items()},
        )
        if moved != 1:
            continue
        passed = ["sent", status] if before == "queued" and status == "delivered" else [status]
        for key, value in changes.items():
            setattr(msg, key, value)
        for step in passed:
            msg.status = step
            await emit(
                session,
                project_id=msg.project_id,
                type=f"message.{step}",
                data=message_payload(msg),
                ordering_key=msg.conversation_id,
            )
        return True
    if values:
        await session.execute(
            update(Message)
            .where(Message.id == msg.id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        for key, value in values.items():
            setattr(msg, key, value)
    return False


_messages = table_of(Message)
_message_events = table_of(MessageEvent)


@functools.cache
def _status_step(columns: tuple[str, ...]) -> Prepared:
    """``UPDATE messages SET status, columns... WHERE id AND status``, built once per set of
    columns, on the Core table, values as parameters (see sms.store)."""
    return Prepared(
        update(_messages)
        .where(_messages.c.id == bindparam("b_id"), _messages.c.status == bindparam("b_before"))
        .values(
            status=bindparam("b_status", type_=String),
            **{name: bindparam(f"v_{name}", type_=_messages.c[name].type) for name in columns},
        )
    )


def log_event(
    session: AsyncSession,
    msg_id: str,
    code: str,
    message: str,
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    """Add to the text's log, in the session's transaction (written when it commits)."""
    insert_at_commit(
        session,
        _message_events,
        {
            "id": new_id("mev"),
            "message_id": msg_id,
            "level": level,
            "code": code,
            "message": message,
            "data": data,
            "created_at": utcnow(),
        },
    )


async def deliver(svc: Sending, msg: SmsRow) -> SmsRow:
    """Hand a stored, claimed outbound text to its carrier and record the outcome."""
    carrier = await svc.carrier_for(msg)
    try:
        if carrier is None:
            raise CarrierError(NO_CARRIER.format(name=msg.provider))
        sent = await carrier.send_sms(
            OutgoingText(
                message_id=msg.id,
                from_number=msg.from_number,
                to_number=msg.to_number,
                text=msg.text,
                status_callback_url=svc.status_callback_url(msg),
            )
        )
    except CarrierError as exc:
        log.warning("sms_carrier_refused", message_id=msg.id, code=exc.code, error=str(exc))
        code, error = exc.code, str(exc)

        async def failed(session: AsyncSession) -> None:
            await set_status(
                session,
                msg,
                "failed",
                work="done",
                error_code=code,
                error_message=error,
            )
            log_event(session, msg.id, "carrier_failed", error, level="error")

        await svc.db.write(failed)
        return msg

    async def handed_over(session: AsyncSession) -> None:
        await set_status(
            session, msg, sent.status, work="done", carrier_message_id=sent.carrier_message_id
        )

    await svc.db.write(handed_over)
    return msg
