"""Outbound phone calls: ``queued -> connecting -> ringing -> in_progress``, or ``failed``.

The one outbound seam every carrier uses (:mod:`relay.carriers.base`):

* ``Carrier.dial(DialRequest) -> OutboundLeg`` asks the number's carrier (on the number's
  carrier account, :class:`relay_numbers.accounts.AccountCarriers`) to ring the callee and
  stream the answered call to the relay's media socket; it returns once the carrier accepted
  the call (the call goes ``ringing``), or raises :class:`~relay.carriers.DialFailed`.
* The carrier's signed status webhooks become :class:`~relay.carriers.LegUpdate` s and reach
  :meth:`Dialler.report`: ``ended`` with ``busy``, ``no_answer``, ``provider_error`` or
  ``canceled`` fails the call with that reason.
* The call is answered when its media socket opens and presents the call's media token
  (:func:`relay.calls.inbound.begin` moves it to ``in_progress``, on whichever node the
  socket lands). The dialler sees that in the store; it never asks the carrier.
* Nobody answered within ``RELAY_OUTBOUND_RING_TIMEOUT_SECONDS`` (the carrier is told the
  same timeout): ``no_answer``. A call ended while it rings (the API, shutdown) is cancelled
  at the carrier (``OutboundLeg.hangup``) and fails ``canceled``.

The sim carrier's outbound calls ring and nobody answers. A carrier the relay has no client
for (or an account it cannot open) fails the call with ``provider_error``.

A call is dialled by the node that holds its lease (:func:`relay.calls.recovery.hold_call`),
so a call is never dialled twice; a queued call whose node died is dialled by another. A
status webhook that lands on a node not dialling the call fails the call there (the
dialling node sees the failure in the store).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from relay import calling_hours, tokens
from relay.calls.event_log import log_event
from relay.calls.lifecycle import LIVE, TRANSITIONS, transition
from relay.calls.recovery import hold_call, hold_new_call, lock_call, release_call
from relay.carriers import CarrierError, DialFailed, DialRequest, LegUpdate, OutboundLeg
from relay.events.writing import writing
from relay.logs import get_logger
from relay.store.db import Database
from relay.store.models import Call, Number, Project
from relay.timefmt import iso
from relay.urls import media_base_url
from relay_numbers.accounts import AccountCarriers

log = get_logger("relay.calls.outbound")
T = TypeVar("T")

# The media tokens of calls (``relay.calls.inbound`` checks them with the same purpose).
MEDIA_TOKEN_PURPOSE = "media"
NO_DIALLER = "The {carrier} carrier cannot place calls from this relay yet."
NO_ANSWER = "Nobody answered within {seconds:g} s."
ENDED_BY_CARRIER = "The carrier ended the call before its media connected."
# How often a ringing call's status is read from the store, to see an answer (its media
# socket, on any node) or an end written elsewhere.
ANSWER_POLL_SECONDS = 0.2


class _Stopped(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _unless_stopped(step: Awaitable[T], stop: asyncio.Future[str]) -> T:
    """Await a carrier step, abandoning it (with :class:`_Stopped`) if a stop comes first."""
    task = asyncio.ensure_future(step)
    try:
        waiters: list[asyncio.Future[Any]] = [task, stop]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise _Stopped(stop.result())
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class _Ended(Exception):
    """The call was answered or ended elsewhere while it rang: nothing left to do here."""


class Dialler:
    """Runs the dialling of outbound calls in this process, one task per call."""

    def __init__(
        self,
        db: Database,
        carriers: AccountCarriers,
        *,
        node_id: str,
        signing_key: bytes,
        public_url: str,
        ring_timeout: float,
    ) -> None:
        self.db = db
        self.carriers = carriers
        self.node_id = node_id
        self.signing_key = signing_key
        self.public_url = public_url
        self.ring_timeout = ring_timeout
        # Runs in the transaction that fails a call it dials: the dialling queue records the
        # outcome there (relay.calls.dial_queue.DialQueue.settle_call), not in one more.
        self.on_end: Callable[[AsyncSession, Call], Awaitable[None]] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # A stop request per call, resolved with the failure reason. Dialling is stopped
        # between steps, never by cancelling a task that may be inside a transaction.
        self._stops: dict[str, asyncio.Future[str]] = {}
        # What the carrier reported about each call's leg, while it rings; the leg's carrier
        # call id once the carrier accepted it (the call is ``ringing`` from then on).
        self._updates: dict[str, asyncio.Future[LegUpdate]] = {}
        self._legs: dict[str, str] = {}

    def dial(self, claimed: Claimed) -> None:
        """Ring a call the queue claimed for this node (:func:`take`), once its claim
        committed."""
        call_id = claimed.call_id
        if call_id in self._tasks:
            return
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[str] = loop.create_future()
        update: asyncio.Future[LegUpdate] = loop.create_future()
        task = asyncio.create_task(self._run(claimed, stop, update), name=f"dial:{call_id}")
        self._tasks[call_id] = task
        self._stops[call_id] = stop
        self._updates[call_id] = update

        def forget(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(call_id, None)
            self._stops.pop(call_id, None)
            self._updates.pop(call_id, None)
            self._legs.pop(call_id, None)

        task.add_done_callback(forget)

    def dialling(self, call_id: str) -> bool:
        return call_id in self._tasks

    async def report(self, call_id: str, update: LegUpdate) -> None:
        """A carrier's (signed) status webhook about the leg of ``call_id``. An ``ended``
        leg fails the call with its reason, here if this node dials it, else in the store;
        a report for another leg than the call's, or for a call past ringing, changes
        nothing."""
        leg = self._legs.get(call_id)
        if leg is not None and leg != update.carrier_call_id:
            return
        if update.status == "ringing":
            if leg is None:  # else the call rings already: no write to make
                await self._advance(call_id, "ringing", update.carrier_call_id)
            return
        waiting = self._updates.get(call_id)
        if waiting is not None:
            if not waiting.done():
                waiting.set_result(update)
            return
        async with self.db.session() as session:
            call = await session.get(Call, call_id)
            known = call.carrier_call_id if call is not None else None
        if known == update.carrier_call_id:
            await self._fail(call_id, update.reason, update.detail or update.reason)

    async def cancel(self, call_id: str, reason: str = "canceled") -> bool:
        """Stop dialling ``call_id`` (it fails with ``reason``); False if not dialling here."""
        task = self._tasks.get(call_id)
        stop = self._stops.get(call_id)
        if task is None or stop is None:
            return False
        if not stop.done():
            stop.set_result(reason)
        try:
            await task
        except Exception as exc:  # recording the end failed; recovery closes it later
            log.warning("dial_cancel_failed", call_id=call_id, error=repr(exc))
        return True

    async def stop(self) -> None:
        await asyncio.gather(*(self.cancel(c, "relay_restart") for c in list(self._tasks)))
        await self.carriers.close()

    async def _run(
        self, claimed: Claimed, stop: asyncio.Future[str], update: asyncio.Future[LegUpdate]
    ) -> None:
        call_id = claimed.call_id
        request = self._request(claimed)
        log.info("dialling", call_id=call_id, carrier=claimed.carrier or None)
        leg: OutboundLeg | None = None
        try:
            carrier = await self.carriers.for_key(
                request.carrier, claimed.carrier_key, claimed.account_id
            )
            if carrier is None:
                raise DialFailed("provider_error", NO_DIALLER.format(carrier=request.carrier))
            leg = await _unless_stopped(carrier.dial(request), stop)
            await self._advance(call_id, "ringing", leg.carrier_call_id)
            self._legs[call_id] = leg.carrier_call_id
            await self._await_answer(call_id, stop, update)
        except _Ended:
            return
        except _Stopped as exc:
            await self._fail(call_id, exc.reason, "Dialling was stopped.", leg)
        except DialFailed as exc:
            await self._fail(call_id, exc.reason, exc.detail, leg)
        except CarrierError as exc:
            await self._fail(call_id, "provider_error", str(exc), leg)
        except Exception as exc:
            log.exception("dial_failed", call_id=call_id)
            await self._fail(call_id, "provider_error", f"{type(exc).__name__}: {exc}", leg)

    async def _await_answer(
        self, call_id: str, stop: asyncio.Future[str], update: asyncio.Future[LegUpdate]
    ) -> None:
        """Return once the call's media socket opened; raise how the ringing ended else."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ring_timeout
        while True:
            # It was written ``ringing`` just now: wait before the first read.
            left = deadline - loop.time()
            waiters: list[asyncio.Future[Any]] = [stop, update]
            await asyncio.wait(waiters, timeout=max(0.0, min(ANSWER_POLL_SECONDS, left)))
            if stop.done():
                raise _Stopped(stop.result())
            if update.done():
                ended = update.result()
                raise DialFailed(ended.reason or "provider_error", ended.detail or ENDED_BY_CARRIER)
            if deadline - loop.time() <= 0:
                # No read first: _fail reads the call under its lock, and leaves an answered
                # (or ended) one alone.
                raise DialFailed("no_answer", NO_ANSWER.format(seconds=self.ring_timeout))
            status = await self._status(call_id)
            if status == "in_progress":
                return
            if status not in ("connecting", "ringing"):
                raise _Ended

    async def _status(self, call_id: str) -> str | None:
        async with self.db.session() as session:
            call = await session.get(Call, call_id, populate_existing=True)
            return call.status if call is not None else None

    def _request(self, claimed: Claimed) -> DialRequest:
        token = tokens.issue(
            self.signing_key, claimed.call_id, MEDIA_TOKEN_PURPOSE, self.ring_timeout + 60
        )
        return DialRequest(
            call_id=claimed.call_id,
            project_id=claimed.project_id,
            carrier=claimed.carrier,
            from_number=claimed.from_number,
            to_number=claimed.to_number,
            media_base_url=media_base_url(self.public_url),
            media_token=token,
            ring_timeout_seconds=self.ring_timeout,
            webhook_base_url=self.public_url,
            detect_machine=claimed.detect_machine,
        )

    async def _advance(self, call_id: str, status: str, carrier_call_id: str | None = None) -> None:
        """Move the call on unless it has moved there (or past it) already."""
        async with writing(self.db) as session:
            call = await lock_call(session, call_id)
            if call is None:
                return
            if carrier_call_id and not call.carrier_call_id:
                call.carrier_call_id = carrier_call_id
            if status in TRANSITIONS[call.status]:
                await transition(session, call, status)

    async def _fail(
        self, call_id: str, reason: str, detail: str, leg: OutboundLeg | None = None
    ) -> None:
        """Fail a call that is still being connected, and cancel its leg at the carrier. A
        call answered meanwhile (its media socket won the race) is left to run."""
        async with writing(self.db) as session:
            call = await lock_call(session, call_id)
            if call is None or call.status not in LIVE or call.status == "in_progress":
                return
            await log_event(session, call_id, "telephony", detail, level="warning")
            await transition(session, call, "failed", reason=reason)
            await release_call(session, call_id)
            if self.on_end is not None:
                await self.on_end(session, call)
        log.info("dial_ended", call_id=call_id, reason=reason)
        if leg is not None:
            try:
                await leg.hangup()
            except Exception as exc:  # the carrier ends an unanswered leg itself in the end
                log.warning("leg_hangup_failed", call_id=call_id, error=repr(exc))


@dataclass(frozen=True, slots=True)
class Claimed:
    """A call claimed for this node (``connecting``, its lease held): what dialling needs."""

    call_id: str
    project_id: str
    carrier: str
    from_number: str
    to_number: str
    carrier_key: str  # the number's carrier account (relay_numbers.keys)
    account_id: str | None  # the project's carrier account it was imported under, if any
    detect_machine: bool = False  # its agent has a ``voicemail`` setting: ask for AMD


async def take(
    session: AsyncSession,
    call: Call,
    number: Number | None,
    node_id: str,
    *,
    new: bool = False,
    check_hours: bool = True,
) -> Claimed | None:
    """Claim ``call`` (``queued``, locked or made in this transaction) for ``node_id``: hold
    its lease and move it to ``connecting``, in the caller's transaction (the queue's claim),
    so a call is never dialled twice. None if another node holds it, or if it is outside the
    calling hours (then it failed ``compliance_block`` here). ``new``: made in this
    transaction, so nobody can hold it; ``check_hours=False``: the caller checked them."""
    if new:
        await hold_new_call(session, call.id, node_id)
    elif not await hold_call(session, call.id, node_id):
        return None
    if check_hours:
        verdict = await _calling_hours(session, call)
        if not verdict.allowed:
            await _block(session, call, verdict)
            return None
    await transition(session, call, "connecting")
    return Claimed(
        call_id=call.id,
        project_id=call.project_id,
        carrier=number.provider if number is not None else "",
        from_number=call.from_number or "",
        to_number=call.to_number or "",
        carrier_key=number.carrier_key if number is not None else "",
        account_id=number.carrier_account_id if number is not None else None,
        detect_machine=bool((call.agent_snapshot or {}).get("voicemail")),
    )


async def _calling_hours(session: AsyncSession, call: Call) -> calling_hours.Verdict:
    """The calling hours of the call's agent (as frozen with the call), else its project's."""
    project = await session.get(Project, call.project_id)
    agent_policy = (call.agent_snapshot or {}).get("calling_hours")
    policy = calling_hours.effective(project.calling_hours if project else None, agent_policy)
    return calling_hours.decide(policy, call.to_number or "", datetime.now(UTC))


async def _block(session: AsyncSession, call: Call, verdict: calling_hours.Verdict) -> None:
    """Outside the calling hours: the call ends before any carrier is asked, its event log
    saying why and when it could ring."""
    data = {
        "reason": verdict.reason,
        "policy": verdict.policy,
        "timeZones": list(verdict.time_zones),
        "localTimes": verdict.local_times,
        "nextAllowedAt": iso(verdict.next_allowed_at) if verdict.next_allowed_at else None,
    }
    await log_event(
        session, call.id, "compliance", verdict.message or "", level="warning", data=data
    )
    await transition(session, call, "failed", reason="compliance_block")
    await release_call(session, call.id)
    log.info("dial_blocked", call_id=call.id, reason=verdict.reason)


DIALLER: web.AppKey[Dialler] = web.AppKey("relay_dialler", Dialler)

__all__ = [
    "DIALLER",
    "Claimed",
    "Dialler",
    "take",
]
