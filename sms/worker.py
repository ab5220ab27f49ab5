"""Answering texts: one conversation's pending work, in arrival order.

``drain`` claims every pending message of a conversation in one UPDATE and works through
them by ``seq``: an inbound text gets its answer (keyword, or a webhook turn), an outbound
one (left over by a crash) is handed to its carrier. What an inbound text can lead to:

    STOP / STOPALL / UNSUBSCRIBE / CANCEL / END / QUIT   opted out, confirmation, no webhook
    START / UNSTOP                                       opted in, confirmation, no webhook
    HELP                                                 the agent's helpText, no webhook
    sender opted out                                     stored, logged, no webhook, no reply
    number has no agent                                  stored, logged ``no_agent``
    agent has no webhook (hosted mode)                   logged ``mode_not_available``;
                                                         its fallbackText if it has one
    webhook answers                                      its text (chunks joined) is the reply;
                                                         past 3 texts cut, ``reply_truncated``
    webhook fails (any TurnError)                        logged ``webhook_failed``, fallback
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import aiohttp
from sqlalchemy import String, bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relay.agent_config import AgentConfig
from relay.logs import get_logger
from relay.store import Database, Prepared, insert_at_commit
from relay.store.models import Agent, Conversation, Message, OptOut, utcnow
from relay.turns import TurnError, TurnRequest, WebhookBrain, agent_message
from sms.agents import live_agent
from sms.history import recent_history
from sms.optout import (
    DEFAULT_HELP,
    START_CONFIRMATION,
    STOP_CONFIRMATION,
    keyword_of,
    opt_in,
    opt_out,
)
from sms.outbound import Sending, deliver, log_event, outbound_row
from sms.segmentation import (
    MAX_REPLY_CHARS,
    MAX_REPLY_MESSAGES,
    MAX_REPLY_SEGMENTS,
    split_messages,
)
from sms.store import SmsRow, message_of, next_seq, table_of

log = get_logger("sms.worker")

DEFAULT_FALLBACK = "Sorry, I can't reply right now. Please try again in a little while."
# Claims older than the sweeper's timeout are taken over; a live worker renews long before.
CLAIM_REFRESH = timedelta(seconds=60)
# The sweeper's (sms.service.CLAIM_TIMEOUT_SECONDS): a claim older than this is abandoned.
CLAIM_TIMEOUT = timedelta(seconds=300)
SENTENCE_END = ".!?:;,"

_messages = table_of(Message)
# Built once, on the Core table (see sms.store).
_DONE = Prepared(
    update(_messages)
    .where(_messages.c.id == bindparam("b_id"))
    .values(
        work="done",
        updated_at=bindparam("b_now", type_=_messages.c.updated_at.type),
        error_code=bindparam("b_error_code", type_=String),
    )
)

_conversations, _opt_outs = table_of(Conversation), table_of(OptOut)
# The conversation's state and whether the sender opted out, in one round trip.
_DECIDE = Prepared(
    select(
        _conversations.c.state,
        exists().where(
            _opt_outs.c.project_id == bindparam("b_project_id"),
            _opt_outs.c.phone_number == bindparam("b_from"),
            _opt_outs.c.opted_in_at.is_(None),
        ),
    ).where(_conversations.c.id == bindparam("b_conversation_id"))
)


@dataclass(slots=True)
class Outcome:
    """What answering one inbound text decided."""

    replies: list[str] = field(default_factory=list)
    state: dict[str, Any] | None = None
    set_state: bool = False
    opt: str | None = None  # "out" | "in"
    events: list[tuple[str, str, str, dict[str, Any] | None]] = field(default_factory=list)
    error_code: str | None = None

    def event(
        self, code: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> Outcome:
        self.events.append((level, code, message, data))
        return self


# What answering a text needs from the store (agent, conversation state, history), or its
# outcome if that needs no webhook.
TurnInputs = Outcome | tuple[Agent, dict[str, Any] | None, list[dict[str, Any]]]


class Answering(Sending, Protocol):
    """What answering texts uses of the process's :class:`sms.service.SmsService`."""

    read_ahead: dict[str, TurnInputs]  # text id -> what its receipt read for its answer
    in_webhook: int  # texts whose webhook request is under way

    def writing(self) -> AbstractAsyncContextManager[AsyncSession]: ...
    def http_session(self) -> aiohttp.ClientSession: ...
    def resolve_replies(self, message_id: str, replies: list[SmsRow]) -> None: ...
    def busy_elsewhere(self, conversation_id: str) -> None:
        """Another node works on the conversation: look at its pending texts again soon."""


def join_text(parts: list[str]) -> str:
    """Chunks' text as one message: as sent, plus a space where one chunk ends a sentence
    and the next starts a word without one ("Sure." + "Tuesday?" -> "Sure. Tuesday?")."""
    out = ""
    for part in parts:
        if out and part and out[-1] in SENTENCE_END and part[0].isalnum():
            out += " "
        out += part
    return out.strip()


async def drain(svc: Answering, conversation_id: str, pushed: list[SmsRow], look: bool) -> None:
    """Work through ``pushed`` (claimed by their sender) and, if ``look``, whatever pending
    work the store holds for the conversation, in ``seq`` order."""
    batch = list(pushed)
    if look:
        async with svc.writing() as session:
            if svc.db.is_sqlite or await _conversation_free(session, conversation_id):
                batch += await _claim_pending(session, conversation_id, svc.node_id)
            else:
                svc.busy_elsewhere(conversation_id)
    # A pushed text whose claim went stale waiting (the sweeper put it back) is claimed
    # again above: one copy of each.
    batch = sorted({m.id: m for m in batch}.values(), key=lambda m: m.seq)
    claimed_at = min((m.claimed_at or utcnow() for m in batch), default=utcnow())
    for index, msg in enumerate(batch):
        # Read when it was received: good only for the first text this drain answers (see
        # SmsService.may_read_ahead); after another one, its answer may have moved the state.
        ahead = svc.read_ahead.pop(msg.id, None)
        try:
            if utcnow() - claimed_at > CLAIM_REFRESH:
                claimed_at = await _refresh_claims(svc, conversation_id)
            if msg.direction == "inbound":
                await answer(svc, msg, ahead if index == 0 else None)
            else:
                await deliver(svc, msg)
        except asyncio.CancelledError:
            await release(svc, [m.id for m in batch[index:]])
            raise
        except Exception as exc:
            log.exception("sms_processing_failed", message_id=msg.id)
            await _give_up(svc, msg, exc)


async def _claim_pending(session: AsyncSession, conversation_id: str, node_id: str) -> list[SmsRow]:
    rows = await session.execute(
        update(_messages)
        .where(_messages.c.conversation_id == conversation_id, _messages.c.work == "pending")
        .values(work="claimed", claimed_at=utcnow(), claimed_by=node_id)
        .returning(*_messages.c)
    )
    return list(map(message_of, rows.mappings()))


async def _conversation_free(session: AsyncSession, conversation_id: str) -> bool:
    """PostgreSQL, several nodes: whether no node works on the conversation, which stays so
    until the transaction ends. The conversation's row lock orders the nodes' claims (and
    waits for texts being stored, which take it too); then, in a statement of its own (a
    fresh snapshot), a claim younger than the sweeper's timeout means a node is at work,
    and it answers in order what it claimed (a dead node's claims are put back by the node
    that takes it over). Texts that reach another node meanwhile stay
    pending for the next claim."""
    await session.execute(
        select(_conversations.c.id).where(_conversations.c.id == conversation_id).with_for_update()
    )
    fresh = utcnow() - CLAIM_TIMEOUT
    busy = await session.scalar(
        select(_messages.c.id)
        .where(
            _messages.c.conversation_id == conversation_id,
            _messages.c.work == "claimed",
            _messages.c.claimed_at > fresh,
        )
        .limit(1)
    )
    return busy is None


async def _refresh_claims(svc: Answering, conversation_id: str) -> datetime:
    """A long queue (slow webhook turns) keeps its claims fresh, so no sweep takes them."""
    now = utcnow()
    async with svc.writing() as session:
        await session.execute(
            update(Message)
            .where(Message.conversation_id == conversation_id, Message.work == "claimed")
            .values(claimed_at=now)
        )
    return now


async def release(svc: Answering, message_ids: list[str]) -> None:
    """Put claimed work back (shutdown): the next start picks it up at once."""
    if message_ids:
        async with svc.writing() as session:
            await session.execute(
                update(Message)
                .where(Message.id.in_(message_ids), Message.work == "claimed")
                .values(work="pending", claimed_at=None, claimed_by=None)
            )


async def _give_up(svc: Answering, msg: SmsRow, exc: Exception) -> None:
    svc.resolve_replies(msg.id, [])
    async with svc.writing() as session:
        await session.execute(
            update(Message)
            .where(Message.id == msg.id)
            .values(work="done", error_code="internal_error", updated_at=utcnow())
        )
        log_event(
            session,
            msg.id,
            "internal_error",
            f"The relay failed while handling this text ({type(exc).__name__}); see its log.",
            level="error",
        )


async def answer(svc: Answering, msg: SmsRow, ahead: TurnInputs | None = None) -> list[SmsRow]:
    """Answer ``msg`` (``ahead``: what :func:`read_turn` found for it, if read already)."""
    replies: list[SmsRow] = []
    try:
        outcome = await decide(svc, msg, ahead)
        replies = await _finish(svc, msg, outcome)
        return replies
    finally:
        svc.resolve_replies(msg.id, replies)


async def decide(svc: Answering, msg: SmsRow, ahead: TurnInputs | None = None) -> Outcome:
    # Read in the group commit's transaction (see Database.write): one transaction for the
    # reads and writes of many texts at once, not one more for each text's reads.
    found = ahead
    if found is None:
        found = await svc.db.write(lambda session: read_turn(session, msg, svc.db))
    if isinstance(found, Outcome):
        return found
    agent, state, history = found
    payload = turn_payload(msg, agent, state, history)
    return await _turn(svc, agent, payload)


async def read_turn(session: AsyncSession, msg: SmsRow, db: Database) -> TurnInputs:
    """What answering ``msg`` needs from the store, or its outcome if that needs no webhook."""
    keyword = keyword_of(msg.text)
    agent = await live_agent(session, db, msg.agent_id)
    (row,) = await _DECIDE.rows(
        session,
        {
            "b_conversation_id": msg.conversation_id,
            "b_project_id": msg.project_id,
            "b_from": msg.from_number,
        },
    )
    state, sender_opted_out = row[0], bool(row[1])
    if keyword is not None:
        return _keyword(msg, keyword, agent)
    if sender_opted_out:
        return Outcome().event(
            "sender_opted_out",
            "The sender has opted out (STOP); the webhook was not called. "
            "It can opt back in with START.",
        )
    if agent is None:
        return Outcome().event(
            "no_agent", "The number has no agent; nobody answered.", level="warning"
        )
    if not agent.webhook_url:
        fallback = AgentConfig.from_stored(agent.config).fallback_text
        return Outcome(replies=[fallback] if fallback else []).event(
            "mode_not_available",
            "The agent is in hosted mode and has no webhookUrl; hosted answers to texts "
            "are not available yet." + (" Sent its fallbackText." if fallback else ""),
            level="warning",
        )
    history = await recent_history(
        session,
        project_id=msg.project_id,
        conversation_id=msg.conversation_id,
        our_number=msg.to_number,
        their_number=msg.from_number,
        before=msg.created_at,
        before_seq=msg.seq,
        db=db,
    )
    return agent, state, history


def _keyword(msg: SmsRow, keyword: str, agent: Agent | None) -> Outcome:
    word = msg.text.strip().rstrip(".!").strip().upper()
    quiet = msg.keyword_handled  # the carrier has already answered it
    if keyword == "stop":
        return Outcome(replies=[] if quiet else [STOP_CONFIRMATION], opt="out").event(
            "opted_out", f"{word}: the sender is opted out of texts and calls."
        )
    if keyword == "start":
        return Outcome(replies=[] if quiet else [START_CONFIRMATION], opt="in").event(
            "opted_in", f"{word}: the sender is opted back in."
        )
    help_text = (AgentConfig.from_stored(agent.config).help_text if agent else None) or DEFAULT_HELP
    return Outcome(replies=[] if quiet else [help_text]).event("help", "HELP: sent the help text.")


def turn_payload(
    msg: SmsRow, agent: Agent, state: dict[str, Any] | None, history: list[dict[str, Any]]
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "messageId": msg.id,
        "conversationId": msg.conversation_id,
        "numberId": msg.number_id,
        "from": msg.from_number,
        "to": msg.to_number,
        "direction": "inbound",
        "text": msg.text,
    }
    if msg.media:
        data["media"] = msg.media
    return agent_message(channel="sms", agent_id=agent.id, data=data, state=state, history=history)


async def _turn(svc: Answering, agent: Agent, payload: dict[str, Any]) -> Outcome:
    assert agent.webhook_url is not None
    turn = TurnRequest(
        url=agent.webhook_url,
        secrets=agent.signing_secrets(),
        timeout_s=agent.webhook_timeout_ms / 1000,
        payload=payload,
    )
    texts: list[str] = []
    size, skipped = 0, False  # characters of text kept; whether any was left out
    state: dict[str, Any] | None = None
    has_state = False
    svc.in_webhook += 1
    try:
        async for chunk in WebhookBrain(svc.http_session()).reply(turn):
            if size <= MAX_REPLY_CHARS:
                texts.append(chunk.text)
                size += len(chunk.text)
            else:
                skipped = skipped or bool(chunk.text.strip())
            if chunk.state is not None:
                state, has_state = chunk.state, True
    except TurnError as exc:
        fallback = AgentConfig.from_stored(agent.config).fallback_text or DEFAULT_FALLBACK
        data: dict[str, Any] = {"reason": exc.reason, "detail": exc.detail}
        if exc.status is not None:
            data["status"] = exc.status
        return Outcome(replies=[fallback], error_code=f"webhook_{exc.reason}").event(
            "webhook_failed",
            f"The webhook failed ({exc.reason}: {exc.detail}); sent the fallback text.",
            level="error",
            data=data,
        )
    finally:
        svc.in_webhook -= 1
    text = join_text(texts)
    messages = split_messages(text, max_messages=MAX_REPLY_MESSAGES + 1) if text else []
    outcome = Outcome(replies=messages[:MAX_REPLY_MESSAGES], state=state, set_state=has_state)
    if skipped or len(messages) > MAX_REPLY_MESSAGES:
        outcome.event(
            "reply_truncated",
            f"The webhook's reply was longer than {MAX_REPLY_MESSAGES} texts "
            f"({MAX_REPLY_SEGMENTS} segments); the rest was not sent.",
            level="warning",
            data={"limitMessages": MAX_REPLY_MESSAGES, "limitSegments": MAX_REPLY_SEGMENTS},
        )
    return outcome


async def _finish(svc: Answering, msg: SmsRow, outcome: Outcome) -> list[SmsRow]:
    """Store the outcome in one transaction (the text done, opt-out, state, replies
    queued, events), then hand the replies to the carrier in order."""
    now = utcnow()

    async def store(session: AsyncSession) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        # The conversation's row first, then its messages: the order receive() takes them in,
        # or a carrier's retry of a text arriving now could deadlock with this (PostgreSQL).
        if outcome.replies:
            conversation_id, last, _ = await next_seq(
                session,
                project_id=msg.project_id,
                our_number=msg.to_number,
                their_number=msg.from_number,
                number_id=msg.number_id,
                agent_id=msg.agent_id,
                now=now,
                count=len(outcome.replies),
                set_state=outcome.set_state,
                state=outcome.state,
            )
        else:
            conversation_id, last = msg.conversation_id, 0
        if outcome.set_state and not outcome.replies:
            await session.execute(
                update(Conversation)
                .where(Conversation.id == msg.conversation_id)
                .values(updated_at=now, state=outcome.state)
                .execution_options(synchronize_session=False)
            )
        await _DONE.rowcount(
            session, {"b_id": msg.id, "b_now": now, "b_error_code": outcome.error_code}
        )
        if outcome.opt == "out":
            word = msg.text.strip().rstrip(".!").strip().upper()[:20]
            await opt_out(
                session, msg.project_id, msg.from_number, keyword=word, our_number=msg.to_number
            )
        elif outcome.opt == "in":
            await opt_in(session, msg.project_id, msg.from_number)
        first = last - len(outcome.replies) + 1
        for offset, text in enumerate(outcome.replies):
            reply = outbound_row(
                project_id=msg.project_id,
                conversation_id=conversation_id,
                seq=first + offset,
                number_id=msg.number_id,
                agent_id=msg.agent_id,
                provider=msg.provider,
                carrier_key=msg.carrier_key,
                from_number=msg.to_number,
                to_number=msg.from_number,
                text=text,
                in_reply_to=msg.id,
                claimed_by=svc.node_id,
            )
            insert_at_commit(session, _messages, reply)
            out.append(reply)
        for level, code, message, data in outcome.events:
            log_event(session, msg.id, code, message, level=level, data=data)
        return out

    out = [message_of(row) for row in await svc.db.write(store)]
    for reply in out:
        await deliver(svc, reply)
    return out
