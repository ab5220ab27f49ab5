"""The SMS side of one relay process: its carriers, the webhook client, the conversation
workers, and the sweeper that picks up work a crash or restart left behind.

The service sits above the paths it runs: ``sms.worker``, ``sms.inbound`` and
``sms.outbound`` each declare the little of it they use as a protocol (``Answering``,
``Receiving``, ``Sending``), so none of them imports this module.

Recovery: work is ``pending`` until a worker claims it; a claim names its node
(``claimed_by``). At start-up every pending message is queued again, and so is every claimed
one this node's previous life held or whose claim is older than :data:`CLAIM_TIMEOUT_SECONDS`
(on SQLite, which one process owns, every claimed one: its claimer is gone). A clean shutdown
puts unfinished claims back to ``pending`` itself. A node that dies has its claims put back
by the survivor that takes it over (:meth:`SmsService.take_over`, within
``RELAY_NODE_TIMEOUT_SECONDS``); the claim's age is the fallback, which the sweeper checks
every :data:`SWEEP_SECONDS`.

Overload: every text costs the relay CPU on its one event loop. When texts come faster than
that loop can answer them, its callbacks run later and later (the loop's lag grows), and so
would every text's answer, without bound. :attr:`SmsService.overloaded` says so when more
than :data:`MAX_WAITING` texts received here are waiting (unanswered, and not in the middle
of their own webhook request), or
when :data:`LATE_PROBES` probes in a row have woken more than :data:`MAX_LAG_SECONDS` late
(the loop is behind for any reason; one long pause, a garbage collection or a migration, is
not overload). The sim carrier's
endpoint then refuses new texts at once (``503 overloaded`` with ``Retry-After``) instead of
queueing them, so the texts it accepts keep being answered quickly. A real carrier's texts
are always stored (refusing one could lose it): they are answered once the loop catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AbstractAsyncContextManager
from datetime import timedelta

import aiohttp
from aiohttp import web
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relay.carriers import Carrier
from relay.carriers.plivo import PlivoCarrier
from relay.carriers.sim import SimCarrier
from relay.carriers.telnyx.accounts import message_webhook_url
from relay.carriers.twilio import TwilioCarrier, TwilioSms
from relay.config import Settings
from relay.egress import client_session
from relay.logs import get_logger
from relay.secretbox import SecretBox
from relay.store.db import Database
from relay.store.models import Message, utcnow
from relay_numbers import TWILIO_DEPLOYMENT_KEY
from relay_numbers.accounts import plivo_accounts, twilio_tokens
from relay_numbers.telnyx_accounts import TelnyxCarriers
from sms.outbound import TextCarrier
from sms.queue import ConversationQueues
from sms.store import SmsRow
from sms.worker import CLAIM_TIMEOUT, TurnInputs, drain, release

log = get_logger("sms.service")

CLAIM_TIMEOUT_SECONDS = CLAIM_TIMEOUT.total_seconds()
# How soon a node looks again at a conversation another node was answering.
BUSY_RETRY_SECONDS = 0.1
SWEEP_SECONDS = 30.0
# Pending work younger than this belongs to the node that stored it, which is about to start.
SWEEP_MIN_AGE_SECONDS = 30.0
SHUTDOWN_GRACE_SECONDS = 10.0
STATUS_CALLBACK_PATH = "/carriers/twilio/sms/status"
PLIVO_STATUS_PATH = "/carriers/plivo/sms/status"
# How often the loop's lag is sampled, and the lag past which new sim texts are refused.
LAG_PROBE_SECONDS = 0.02
MAX_LAG_SECONDS = 0.05
LATE_PROBES = 4
# Texts received and not yet answered, less those whose webhook is answering: a backlog of
# this many costs each new text about MAX_WAITING x (CPU per text) of waiting.
MAX_WAITING = 50


class SmsService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        carriers: dict[str, Carrier] | None = None,
        *,
        sim: SimCarrier | None = None,
        twilio: TwilioCarrier | None = None,
        secret_box: SecretBox | None = None,
        telnyx: TelnyxCarriers | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.node_id = settings.effective_node_id()
        self.secret_box = secret_box or SecretBox(settings.encryption_key)
        # Project carrier accounts' Twilio clients, by (AccountSid, token): made on first use.
        self._accounts: dict[tuple[str, str], TwilioSms] = {}
        self._plivo: dict[tuple[str, str], PlivoCarrier] = {}  # the same, by (auth id, token)
        self.sim = sim or SimCarrier()
        self.twilio = twilio or TwilioCarrier.from_settings(settings)
        self.carriers: dict[str, Carrier] = carriers or {"sim": self.sim, "twilio": self.twilio}
        # Telnyx texts go out on their number's account only (the relay has none of its own).
        self.telnyx = telnyx or TelnyxCarriers(
            db, self.secret_box, public_url=settings.effective_public_url()
        )
        self.queues: ConversationQueues[SmsRow] = ConversationQueues(self._drain)
        self._waiters: dict[str, asyncio.Future[list[SmsRow]]] = {}
        self._http: aiohttp.ClientSession | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.shutdown_grace = SHUTDOWN_GRACE_SECONDS
        self._stopping = asyncio.Event()
        self.max_lag = MAX_LAG_SECONDS
        self._late = 0  # lag probes in a row that woke more than max_lag late
        self.max_waiting = MAX_WAITING
        # Inbound texts received here, not yet answered, oldest first: id -> when received.
        self._unanswered: dict[str, float] = {}
        self.in_webhook = 0  # texts whose webhook request is under way
        # What answering a text needs, read in the transaction that stored it: text id ->
        # inputs (see may_read_ahead); conversation id -> the text reading ahead for it.
        self.read_ahead: dict[str, TurnInputs] = {}
        self._reading_ahead: dict[str, str] = {}
        self._lag_watch: asyncio.Task[None] | None = None

    def writing(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A write transaction (on SQLite, queued behind the process's other writers)."""
        return self.db.writing()

    async def _drain(self, conversation_id: str, pushed: list[SmsRow], look: bool) -> None:
        await drain(self, conversation_id, pushed, look)

    def busy_elsewhere(self, conversation_id: str) -> None:
        """Another node answers the conversation: look at its pending texts again soon (it
        may have finished with what it claimed before they came)."""
        if not self._stopping.is_set():
            loop = asyncio.get_running_loop()
            loop.call_later(BUSY_RETRY_SECONDS, self.queues.notify, conversation_id)

    @property
    def claims_on_receipt(self) -> bool:
        """Whether a stored text is claimed in the same transaction and pushed to its worker.
        On SQLite (one process, writes in lock order) commit order is push order, so the
        worker skips a round trip to claim it. On PostgreSQL texts of one conversation can
        commit in one order and reach the queue in another: the worker claims them from the
        store, in ``seq`` order."""
        return self.db.is_sqlite

    def may_read_ahead(self, conversation_id: str, message_id: str) -> bool:
        """Whether the text being received may read what its answer needs in the transaction
        that stores it, saving its worker a transaction of its own. Only where texts are
        claimed on receipt (SQLite: one process), and only when nothing else of the
        conversation is queued, being answered, or reading ahead: then nothing of this
        relay's can change the conversation before its worker answers this text. It stays
        reserved for ``message_id`` until :meth:`done_reading_ahead` (after the push)."""
        if not self.claims_on_receipt:
            return False
        owner = self._reading_ahead.get(conversation_id)
        if owner is not None:
            return owner == message_id  # a retry of the same transaction
        if not self.queues.idle_for(conversation_id):
            return False
        self._reading_ahead[conversation_id] = message_id
        return True

    def done_reading_ahead(self, conversation_id: str | None, message_id: str) -> None:
        if conversation_id is not None and self._reading_ahead.get(conversation_id) == message_id:
            del self._reading_ahead[conversation_id]

    def http_session(self) -> aiohttp.ClientSession:
        """The client for agents' webhooks (made on first use, inside the event loop)."""
        if self._http is None or self._http.closed:
            self._http = client_session(self.settings, limit=0, ttl_dns_cache=300)
        return self._http

    def status_callback_url(self, msg: SmsRow) -> str | None:
        base = self.settings.effective_public_url()
        if msg.provider == "telnyx" and msg.carrier_key:
            return message_webhook_url(base, msg.carrier_key.removeprefix("telnyx:"))
        if msg.provider == "plivo":
            # The auth id rides in the signed URL: it says whose token signs the report.
            auth_id = (msg.carrier_key or "").removeprefix("plivo:")
            return f"{base}{PLIVO_STATUS_PATH}?authId={auth_id}&messageId={msg.id}"
        if msg.provider != "twilio":
            return None
        return f"{base}{STATUS_CALLBACK_PATH}?messageId={msg.id}"

    async def _plivo_for(self, msg: SmsRow) -> TextCarrier | None:
        auth_id = (msg.carrier_key or "").removeprefix("plivo:")
        found = await plivo_accounts(self.db, self.secret_box, auth_id)
        if not found:
            return None
        key = (found[0].auth_id, found[0].auth_token)
        if key not in self._plivo:
            base = self.settings.plivo_api_base_url
            self._plivo[key] = PlivoCarrier(found[0], api_base_url=base)
        return self._plivo[key]

    async def carrier_for(self, msg: SmsRow) -> TextCarrier | None:
        """Who sends ``msg``: its number's carrier account when a project added it, else the
        relay's own carrier of that provider."""
        key = msg.carrier_key or ""
        if msg.provider == "telnyx":
            return await self.telnyx.for_key(key)
        if msg.provider == "plivo":
            return await self._plivo_for(msg)
        if (
            msg.provider != "twilio"
            or not key.startswith("twilio:")
            or key == TWILIO_DEPLOYMENT_KEY
        ):
            return self.carriers.get(msg.provider)
        sid = key.removeprefix("twilio:")
        tokens = await twilio_tokens(self.db, self.secret_box, sid)
        if not tokens:
            return None
        client = self._accounts.get((sid, tokens[0]))
        if client is None:
            client = TwilioSms(sid, tokens[0], api_base_url=self.settings.twilio_api_base_url)
            self._accounts[(sid, tokens[0])] = client
        return client

    def expect_replies(self, message_id: str) -> asyncio.Future[list[SmsRow]]:
        future: asyncio.Future[list[SmsRow]] = asyncio.get_running_loop().create_future()
        self._waiters[message_id] = future
        return future

    def resolve_replies(self, message_id: str, replies: list[SmsRow]) -> None:
        """The text is answered (``replies`` handed to the carrier, maybe none)."""
        self._unanswered.pop(message_id, None)
        future = self._waiters.pop(message_id, None)
        if future is not None and not future.done():
            future.set_result(replies)

    def forget_replies(self, message_id: str) -> None:
        self._waiters.pop(message_id, None)

    async def recover(self, *, startup: bool = False) -> int:
        """Queue again what nobody is working on. Returns how many conversations."""
        now = utcnow()
        stale = (
            now if startup and self.db.is_sqlite else now - timedelta(seconds=CLAIM_TIMEOUT_SECONDS)
        )
        abandoned = Message.claimed_at <= stale
        if startup:  # nothing here has claimed anything yet: what names us is a past life's
            abandoned = or_(abandoned, Message.claimed_by == self.node_id)
        async with self.writing() as session:
            await session.execute(
                update(Message)
                .where(Message.work == "claimed", abandoned)
                .values(work="pending", claimed_at=None, claimed_by=None)
            )
            pending = select(Message.conversation_id).where(Message.work == "pending")
            if not startup:
                pending = pending.where(
                    Message.created_at < now - timedelta(seconds=SWEEP_MIN_AGE_SECONDS)
                )
            conversations = list((await session.execute(pending.distinct())).scalars())
        for conversation_id in conversations:
            self.queues.notify(conversation_id)
        if conversations:
            log.info("sms_recovered", conversations=len(conversations), startup=startup)
        return len(conversations)

    async def take_over(self, dead: str) -> int:
        """Put the texts node ``dead`` had claimed back and answer them here (or wherever
        their conversation is claimed next), in order. Returns how many."""
        async with self.writing() as session:
            rows = await session.execute(
                update(Message)
                .where(Message.work == "claimed", Message.claimed_by == dead)
                .values(work="pending", claimed_at=None, claimed_by=None)
                .returning(Message.conversation_id)
                .execution_options(synchronize_session=False)
            )
            taken = list(rows.scalars())
        for conversation_id in set(taken):
            self.queues.notify(conversation_id)
        return len(taken)

    @property
    def overloaded(self) -> bool:
        """Whether the event loop is too far behind to take more texts it need not take."""
        # A text unanswered here for this long was taken over by another node (or is stuck
        # behind a webhook that long): either way not a sign of this loop's load.
        stale = time.monotonic() - CLAIM_TIMEOUT_SECONDS
        while self._unanswered and next(iter(self._unanswered.values())) < stale:
            del self._unanswered[next(iter(self._unanswered))]
        waiting = len(self._unanswered) - self.in_webhook
        return waiting > self.max_waiting or self._late >= LATE_PROBES

    def received(self, message_id: str) -> None:
        """A text was stored here and queued for its answer."""
        self._unanswered[message_id] = time.monotonic()

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            began = loop.time()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            late = loop.time() - began - LAG_PROBE_SECONDS > self.max_lag
            self._late = self._late + 1 if late else 0

    async def _sweep(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SWEEP_SECONDS)
            if self._stopping.is_set():
                return
            try:
                await self.recover()
            except Exception:  # a database hiccup: try again next round
                log.exception("sms_sweep_failed")

    async def start(self) -> None:
        try:
            await self.recover(startup=True)
        except Exception:  # database unreachable or not migrated yet: the sweep retries
            log.exception("sms_startup_recovery_deferred")
        self._sweeper = asyncio.create_task(self._sweep(), name="sms:sweeper")
        self._lag_watch = asyncio.create_task(self._watch_lag(), name="sms:lag")

    async def stop(self) -> None:
        if self._sweeper is not None:
            # Not cancel(): a sweep may be inside a transaction.
            self._stopping.set()
            await self._sweeper
        if self._lag_watch is not None:
            self._stopping.set()
            await self._lag_watch
        left = await self.queues.close(self.shutdown_grace)
        self.read_ahead.clear()
        await release(self, [m.id for m in left])
        for future in self._waiters.values():
            future.cancel()
        self._waiters.clear()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        await self.twilio.close()
        await self.telnyx.close()
        for client in self._accounts.values():
            await client.close()
        self._accounts.clear()
        for plivo in self._plivo.values():
            await plivo.close()
        self._plivo.clear()


SMS: web.AppKey[SmsService] = web.AppKey("sms", SmsService)
