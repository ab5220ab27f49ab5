"""Outbound phone calls: ``queued -> connecting -> ringing -> in_progress``, or ``failed``.

Calls are placed through the number's carrier (:class:`relay.carriers.Carrier`):
``dial(DialRequest) -> OutboundLeg`` returns once the carrier has accepted the call and the
far end rings, or raises :class:`~relay.carriers.DialFailed` with a failure reason
(``busy``, ``provider_error``...). The leg's ``answered()`` returns once the far end picked
up and the carrier opened the media socket (at ``request.media_url``, whose token names the
call); from there the media transport runs the call exactly as it runs an inbound one.
``hangup()`` abandons the leg.

The sim carrier's outbound calls ring and nobody answers: after
``RELAY_OUTBOUND_RING_TIMEOUT_SECONDS`` they fail with ``no_answer``. A carrier the relay has
no client for fails the call with ``provider_error``.

A call is dialled by the node that holds its lease (:func:`relay.calls.recovery.hold_call`),
so a call is never dialled twice; a queued call whose node died is dialled by another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from relay import calling_hours, tokens
from relay.calls.event_log import log_event
from relay.calls.lifecycle import LIVE, TRANSITIONS, transition
from relay.calls.recovery import hold_call, lock_call, release_call
from relay.carriers import CarrierError, CarrierRegistry, DialFailed, DialRequest, OutboundLeg
from relay.events.writing import writing
from relay.logs import get_logger
from relay.store.db import Database
from relay.store.models import Call, Number, Project
from relay.timefmt import iso
from relay.urls import media_base_url

log = get_logger("relay.calls.outbound")
T = TypeVar("T")

# The media tokens of calls (``relay.calls.inbound`` checks them with the same purpose).
MEDIA_TOKEN_PURPOSE = "media"
NO_DIALLER = "The {carrier} carrier cannot place calls from this relay yet."
NO_ANSWER = "Nobody answered within {seconds:g} s."


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


class Dialler:
    """Runs the dialling of outbound calls in this process, one task per call."""

    def __init__(
        self,
        db: Database,
        carriers: CarrierRegistry,
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
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # A stop request per call, resolved with the failure reason. Dialling is stopped
        # between steps, never by cancelling a task that may be inside a transaction.
        self._stops: dict[str, asyncio.Future[str]] = {}

    def dial(self, call_id: str) -> None:
        if call_id in self._tasks:
            return
        stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._run(call_id, stop), name=f"dial:{call_id}")
        self._tasks[call_id] = task
        self._stops[call_id] = stop

        def forget(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(call_id, None)
            self._stops.pop(call_id, None)

        task.add_done_callback(forget)

    async def redial(self, call_ids: list[str]) -> None:
        for call_id in call_ids:
            self.dial(call_id)

    def dialling(self, call_id: str) -> bool:
        return call_id in self._tasks

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

    async def _run(self, call_id: str, stop: asyncio.Future[str]) -> None:
        request = await self._claim(call_id)
        if request is None:
            return
        leg: OutboundLeg | None = None
        try:
            carrier = self.carriers.get(request.carrier)
            if carrier is None:
                raise DialFailed("provider_error", NO_DIALLER.format(carrier=request.carrier))
            leg = await _unless_stopped(carrier.dial(request), stop)
            if not await self._advance(call_id, "ringing", leg.carrier_call_id):
                await leg.hangup()
                return
            try:
                await asyncio.wait_for(_unless_stopped(leg.answered(), stop), self.ring_timeout)
            except TimeoutError:
                raise DialFailed("no_answer", NO_ANSWER.format(seconds=self.ring_timeout)) from None
            await self._advance(call_id, "in_progress")
        except _Stopped as exc:
            await self._hangup(leg)
            await self._fail(call_id, exc.reason, "Dialling was stopped.")
        except DialFailed as exc:
            await self._hangup(leg)
            await self._fail(call_id, exc.reason, exc.detail)
        except CarrierError as exc:
            await self._hangup(leg)
            await self._fail(call_id, "provider_error", str(exc))
        except Exception as exc:
            log.exception("dial_failed", call_id=call_id)
            await self._hangup(leg)
            await self._fail(call_id, "provider_error", f"{type(exc).__name__}: {exc}")

    async def _claim(self, call_id: str) -> DialRequest | None:
        async with writing(self.db) as session:
            call = await lock_call(session, call_id)
            if call is None or call.status != "queued":
                return None
            if not await hold_call(session, call_id, self.node_id):
                return None
            verdict = await _calling_hours(session, call)
            if not verdict.allowed:
                await _block(session, call, verdict)
                return None
            number = await session.get(Number, call.number_id) if call.number_id else None
            await transition(session, call, "connecting")
        token = tokens.issue(self.signing_key, call_id, MEDIA_TOKEN_PURPOSE, self.ring_timeout + 60)
        log.info("dialling", call_id=call_id, carrier=number.provider if number else None)
        return DialRequest(
            call_id=call_id,
            project_id=call.project_id,
            carrier=number.provider if number is not None else "",
            from_number=call.from_number or "",
            to_number=call.to_number or "",
            media_base_url=media_base_url(self.public_url),
            media_token=token,
            ring_timeout_seconds=self.ring_timeout,
        )

    async def _advance(self, call_id: str, status: str, carrier_call_id: str | None = None) -> bool:
        """Move the call on unless it has moved there (or ended) already."""
        async with writing(self.db) as session:
            call = await lock_call(session, call_id)
            if call is None:
                return False
            if carrier_call_id and not call.carrier_call_id:
                call.carrier_call_id = carrier_call_id
            if call.status == status:
                return True
            if status not in TRANSITIONS[call.status]:
                return False
            await transition(session, call, status)
        return True

    async def _fail(self, call_id: str, reason: str, detail: str) -> None:
        async with writing(self.db) as session:
            call = await lock_call(session, call_id)
            if call is None or call.status not in LIVE or call.status == "in_progress":
                return
            await log_event(session, call_id, "telephony", detail, level="warning")
            await transition(session, call, "failed", reason=reason)
            await release_call(session, call_id)
        log.info("dial_ended", call_id=call_id, reason=reason)

    @staticmethod
    async def _hangup(leg: OutboundLeg | None) -> None:
        if leg is not None:
            with contextlib.suppress(Exception):
                await leg.hangup()


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
    "Dialler",
]
