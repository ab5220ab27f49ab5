"""``/v1/messages`` and ``/v1/conversations``: send texts, read texts and threads.

Every route needs a secret key: a publishable key (one that sits in a web page) answers
``403 publishable_key_not_allowed`` here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.api.agents import load_agent
from relay.api.pagination import fetch_page, newest_first
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, OutModel, Page, PageQuery
from relay.errors import NotFound, invalid_field
from relay.phone import to_e164
from relay.store import insert_at_commit
from relay.store.models import Conversation, Message, MessageEvent, Number, OptOut
from sms.history import recent_history
from sms.optout import is_opted_out, refuse_if_opted_out
from sms.outbound import deliver, outbound_row
from sms.service import SMS
from sms.store import SmsRow, message_of, messages, next_seq

router = Router()
TAG = "Messages"
SENDER_REQUIRED = "Send agentId or from: which of your numbers the text comes from."
NO_SMS_NUMBER = "The agent has no number that can send texts; bind one first."
CANNOT_TEXT = "This number cannot send texts (its capabilities do not include sms)."
NO_CARRIER = "This relay cannot send texts through {provider!r} numbers yet."
SAME_NUMBER = "to must differ from the sending number."
MAX_TEXT = 1600

Direction = Literal["inbound", "outbound"]
Status = Literal["received", "queued", "sent", "delivered", "failed"]


class MessageCreate(APIModel):
    agent_id: str | None = Field(default=None, max_length=60, description="Send as this agent.")
    from_: str | None = Field(
        default=None,
        alias="from",
        max_length=40,
        description="One of the project's numbers (default: the agent's first number).",
    )
    to: str = Field(max_length=40, description="E.164, like +14155550123.")
    text: str = Field(min_length=1, max_length=MAX_TEXT)


class MessageOut(OutModel):
    id: str
    object: Literal["message"] = "message"
    conversation_id: str
    agent_id: str | None
    number_id: str | None
    direction: Direction
    from_: str = Field(alias="from")
    to: str
    text: str
    media: list[dict[str, Any]] | None
    status: Status
    segments: int
    encoding: Literal["gsm7", "ucs2"]
    provider: str
    carrier_message_id: str | None
    in_reply_to: str | None
    error_code: str | None
    error_message: str | None
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None


class MessageEventOut(OutModel):
    code: str
    level: str
    message: str
    data: dict[str, Any] | None
    created_at: datetime


class MessageDetail(MessageOut):
    events: list[MessageEventOut]


class MessageQuery(PageQuery):
    conversation_id: str | None = Field(default=None, max_length=60)
    agent_id: str | None = Field(default=None, max_length=60)
    number_id: str | None = Field(default=None, max_length=60)
    direction: Direction | None = None
    status: Status | None = None
    from_: str | None = Field(default=None, alias="from", max_length=40)
    to: str | None = Field(default=None, max_length=40)


class ConversationOut(OutModel):
    id: str
    object: Literal["conversation"] = "conversation"
    number_id: str | None
    agent_id: str | None
    our_number: str
    their_number: str
    state: dict[str, Any] | None
    message_count: int
    opted_out: bool
    last_message_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ConversationDetail(ConversationOut):
    recent_history: list[dict[str, Any]] = Field(
        description="Texts and call transcripts between the two numbers, oldest first."
    )


class ConversationQuery(PageQuery):
    number_id: str | None = Field(default=None, max_length=60)
    agent_id: str | None = Field(default=None, max_length=60)
    their_number: str | None = Field(default=None, max_length=40)


def message_out(m: Message | SmsRow, cls: type[MessageOut] = MessageOut, **extra: Any) -> Any:
    return cls(
        id=m.id,
        conversation_id=m.conversation_id,
        agent_id=m.agent_id,
        number_id=m.number_id,
        direction=m.direction,
        from_=m.from_number,
        to=m.to_number,
        text=m.text,
        media=m.media,
        status=m.status,
        segments=m.segments,
        encoding=m.encoding,
        provider=m.provider,
        carrier_message_id=m.carrier_message_id,
        in_reply_to=m.in_reply_to,
        error_code=m.error_code,
        error_message=m.error_message,
        created_at=m.created_at,
        sent_at=m.sent_at,
        delivered_at=m.delivered_at,
        **extra,
    )


def _conversation_out(
    c: Conversation, opted_out: bool, cls: type[ConversationOut] = ConversationOut, **extra: Any
) -> Any:
    return cls(
        id=c.id,
        number_id=c.number_id,
        agent_id=c.agent_id,
        our_number=c.our_number,
        their_number=c.their_number,
        state=c.state,
        message_count=c.message_count,
        opted_out=opted_out,
        last_message_at=c.last_message_at,
        created_at=c.created_at,
        updated_at=c.updated_at,
        **extra,
    )


async def _sender(ctx: Context, session: AsyncSession, body: MessageCreate) -> Number:
    if body.from_ is None and body.agent_id is None:
        raise invalid_field("agentId", SENDER_REQUIRED, "missing_field")
    if body.from_ is not None:
        phone = to_e164(body.from_, field="from")
        number: Number | None = (
            await session.execute(
                select(Number).where(
                    Number.project_id == ctx.project_id,
                    Number.phone_number == phone,
                    Number.released_at.is_(None),
                )
            )
        ).scalar_one_or_none()
        if number is None:
            raise NotFound(f"No number {phone} in this project.", field="from")
        if body.agent_id is not None:
            await load_agent(ctx, session, body.agent_id)
    else:
        assert body.agent_id is not None
        agent = await load_agent(ctx, session, body.agent_id)
        numbers = (
            await session.execute(
                select(Number)
                .where(Number.agent_id == agent.id, Number.released_at.is_(None))
                .order_by(Number.id)
            )
        ).scalars()
        number = next((n for n in numbers if "sms" in n.capabilities), None)
        if number is None:
            raise invalid_field("agentId", NO_SMS_NUMBER, "agent_has_no_number")
    if "sms" not in number.capabilities:
        raise invalid_field("from", CANNOT_TEXT, "number_cannot_text")
    if number.provider not in ctx.request.app[SMS].carriers:
        raise invalid_field(
            "from", NO_CARRIER.format(provider=number.provider), "carrier_not_supported"
        )
    return number


@router.route(
    "POST",
    "/v1/messages",
    summary="Send a text",
    tag=TAG,
    body=MessageCreate,
    response=MessageOut,
    status=201,
    errors=(400, 401, 403, 404, 413, 415, 422, 429),
)
async def send_message(ctx: Context, body: MessageCreate) -> MessageOut:
    """Stores the text, hands it to the sending number's carrier and answers with how far
    it got (``queued``, ``sent``, ``delivered``, or ``failed`` with ``errorCode``); delivery
    reports that come later arrive as ``message.*`` lifecycle events. A number that replied
    STOP is refused with ``403 compliance_block`` (reason ``opted_out``)."""
    svc = ctx.request.app[SMS]
    to = to_e164(body.to, field="to")
    async with ctx.state.db.session() as session:
        number = await _sender(ctx, session, body)
        if to == number.phone_number:
            raise invalid_field("to", SAME_NUMBER)
        await refuse_if_opted_out(session, ctx.project_id, to)
    agent_id = body.agent_id or number.agent_id
    async with svc.writing() as session:
        conversation_id, seq, _ = await next_seq(
            session,
            project_id=ctx.project_id,
            our_number=number.phone_number,
            their_number=to,
            number_id=number.id,
            agent_id=agent_id,
        )
        row = outbound_row(
            project_id=ctx.project_id,
            conversation_id=conversation_id,
            seq=seq,
            number_id=number.id,
            agent_id=agent_id,
            provider=number.provider,
            carrier_key=number.carrier_key,
            from_number=number.phone_number,
            to_number=to,
            text=body.text,
            claimed_by=svc.node_id,
        )
        insert_at_commit(session, messages, row)
    msg = message_of(row)
    await deliver(svc, msg)
    result: MessageOut = message_out(msg)
    return result


@router.route(
    "GET",
    "/v1/messages",
    summary="List texts",
    tag=TAG,
    query=MessageQuery,
    response=Page[MessageOut],
    errors=(401, 403, 422, 429),
)
async def list_messages(ctx: Context, query: MessageQuery) -> Page[MessageOut]:
    """Newest first, both directions. Pass ``nextCursor`` back as ``cursor``."""
    stmt = select(Message).where(Message.project_id == ctx.project_id)
    if query.conversation_id:
        stmt = stmt.where(Message.conversation_id == query.conversation_id)
    if query.agent_id:
        stmt = stmt.where(Message.agent_id == query.agent_id)
    if query.number_id:
        stmt = stmt.where(Message.number_id == query.number_id)
    if query.direction:
        stmt = stmt.where(Message.direction == query.direction)
    if query.status:
        stmt = stmt.where(Message.status == query.status)
    if query.from_:
        stmt = stmt.where(Message.from_number == to_e164(query.from_, field="from"))
    if query.to:
        stmt = stmt.where(Message.to_number == to_e164(query.to, field="to"))
    stmt = newest_first(stmt, Message.id, query)
    async with ctx.state.db.session() as session:
        window = await fetch_page(session, stmt, query)
    return window.page(Page[MessageOut], message_out)


@router.route(
    "GET",
    "/v1/messages/{message_id}",
    summary="Get a text, with its log",
    tag=TAG,
    response=MessageDetail,
    errors=(401, 403, 404, 429),
)
async def get_message(ctx: Context) -> MessageDetail:
    """``events`` says what the relay did with the text: keywords, webhook failures (with
    the reason), fallbacks, carrier errors."""
    message_id = ctx.path("message_id")
    async with ctx.state.db.session() as session:
        msg = (
            await session.execute(
                select(Message).where(
                    Message.id == message_id, Message.project_id == ctx.project_id
                )
            )
        ).scalar_one_or_none()
        if msg is None:
            raise NotFound(f"No message {message_id!r} in this project.")
        events = (
            await session.execute(
                select(MessageEvent)
                .where(MessageEvent.message_id == msg.id)
                .order_by(MessageEvent.created_at, MessageEvent.id)
            )
        ).scalars()
        out = [
            MessageEventOut(
                code=e.code, level=e.level, message=e.message, data=e.data, created_at=e.created_at
            )
            for e in events
        ]
    result: MessageDetail = message_out(msg, MessageDetail, events=out)
    return result


async def _opted_out(session: AsyncSession, project_id: str, numbers: list[str]) -> set[str]:
    if not numbers:
        return set()
    rows = await session.execute(
        select(OptOut.phone_number).where(
            OptOut.project_id == project_id,
            OptOut.phone_number.in_(numbers),
            OptOut.opted_in_at.is_(None),
        )
    )
    return set(rows.scalars())


@router.route(
    "GET",
    "/v1/conversations",
    summary="List conversations",
    tag=TAG,
    query=ConversationQuery,
    response=Page[ConversationOut],
    errors=(401, 403, 422, 429),
)
async def list_conversations(ctx: Context, query: ConversationQuery) -> Page[ConversationOut]:
    """A conversation is one of your numbers and one other number: the texts between them,
    and (in ``recentHistory``) the calls. Newest first."""
    stmt = select(Conversation).where(Conversation.project_id == ctx.project_id)
    if query.number_id:
        stmt = stmt.where(Conversation.number_id == query.number_id)
    if query.agent_id:
        stmt = stmt.where(Conversation.agent_id == query.agent_id)
    if query.their_number:
        phone = to_e164(query.their_number, field="theirNumber")
        stmt = stmt.where(Conversation.their_number == phone)
    stmt = newest_first(stmt, Conversation.id, query)
    async with ctx.state.db.session() as session:
        window = await fetch_page(session, stmt, query)
        opted = await _opted_out(session, ctx.project_id, [c.their_number for c in window.rows])
    return window.page(
        Page[ConversationOut], lambda c: _conversation_out(c, c.their_number in opted)
    )


@router.route(
    "GET",
    "/v1/conversations/{conversation_id}",
    summary="Get a conversation, with its recent history",
    tag=TAG,
    response=ConversationDetail,
    errors=(401, 403, 404, 429),
)
async def get_conversation(ctx: Context) -> ConversationDetail:
    """``recentHistory`` is what the webhook would be sent next: texts and call transcripts
    between the two numbers, oldest first, each entry with its ``channel``."""
    conversation_id = ctx.path("conversation_id")
    async with ctx.state.db.session() as session:
        conv = (
            await session.execute(
                select(Conversation).where(
                    Conversation.id == conversation_id,
                    Conversation.project_id == ctx.project_id,
                )
            )
        ).scalar_one_or_none()
        if conv is None:
            raise NotFound(f"No conversation {conversation_id!r} in this project.")
        history = await recent_history(
            session,
            project_id=ctx.project_id,
            conversation_id=conv.id,
            our_number=conv.our_number,
            their_number=conv.their_number,
            limit=50,
        )
        opted = await is_opted_out(session, ctx.project_id, conv.their_number)
    result: ConversationDetail = _conversation_out(
        conv, opted, ConversationDetail, recent_history=history
    )
    return result
