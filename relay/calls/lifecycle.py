"""The one place a call's status changes.

    queued -> connecting -> ringing (outbound phone only) -> in_progress -> completed | failed

``failed`` is reachable from every live state and carries a reason. An illegal transition is
refused (:class:`IllegalTransition`) and logged, never stored. Each transition is stored, written
to the call's event log and emitted as a ``call.<status>`` lifecycle event in ONE transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from relay.calls import intelligence
from relay.calls.event_log import log_event
from relay.events import emit
from relay.ids import new_id
from relay.logs import get_logger
from relay.store.models import Call, CallEvent, utcnow

log = get_logger("relay.calls")

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"connecting", "failed"}),
    "connecting": frozenset({"ringing", "in_progress", "failed"}),
    "ringing": frozenset({"in_progress", "failed"}),
    "in_progress": frozenset({"completed", "failed"}),
    "completed": frozenset(),
    "failed": frozenset(),
}
STATUSES = tuple(TRANSITIONS)
# Session.info: the outbound calls that ended in its transaction (relay.calls.dial_queue).
ENDED_OUTBOUND = "relay_outbound_calls_ended"
LIVE = frozenset({"queued", "connecting", "ringing", "in_progress"})
FAILURE_REASONS = frozenset(
    {
        "provider_error",
        "network_timeout",
        "no_answer",
        "busy",
        "compliance_block",
        "webhook_error",
        "agent_error",
        "relay_restart",
        "caller_hangup_before_answer",
        "max_duration",
        "canceled",
    }
)


class IllegalTransition(Exception):
    def __init__(self, call_id: str, current: str, wanted: str) -> None:
        super().__init__(f"call {call_id}: {current} -> {wanted} is not allowed")
        self.current = current
        self.wanted = wanted


def call_payload(call: Call) -> dict[str, Any]:
    """What lifecycle webhooks say about a call."""
    return {
        "callId": call.id,
        "agentId": call.agent_id,
        "numberId": call.number_id,
        "status": call.status,
        "direction": call.direction,
        "from": call.from_number,
        "to": call.to_number,
        "failureReason": call.failure_reason,
        "startedAt": call.started_at.isoformat() if call.started_at else None,
        "endedAt": call.ended_at.isoformat() if call.ended_at else None,
        "metadata": call.call_metadata,
    }


async def transition(
    session: AsyncSession, call: Call, status: str, *, reason: str | None = None
) -> None:
    """Move ``call`` to ``status`` inside the caller's transaction."""
    if status not in TRANSITIONS.get(call.status, frozenset()):
        log.warning("illegal_transition", call_id=call.id, current=call.status, wanted=status)
        raise IllegalTransition(call.id, call.status, status)
    if status == "failed" and reason not in FAILURE_REASONS:
        raise ValueError(f"failed needs a reason from {sorted(FAILURE_REASONS)}, got {reason!r}")
    now = utcnow()
    call.status = status
    if status == "in_progress":
        call.started_at = now
    if status in ("completed", "failed"):
        call.ended_at = now
        call.failure_reason = reason if status == "failed" else None
        if call.direction == "outbound":  # the dialling queue wakes when this commits
            session.info.setdefault(ENDED_OUTBOUND, set()).add(call.id)
    message = f"status -> {status}" + (f" ({reason})" if reason else "")
    session.add(
        CallEvent(
            id=new_id("cev"),
            call_id=call.id,
            level="error" if status == "failed" else "info",
            source="lifecycle",
            message=message,
            data={"status": status, "reason": reason},
            created_at=now,
        )
    )
    await emit(
        session,
        project_id=call.project_id,
        type=f"call.{status}",
        data=call_payload(call),
        ordering_key=call.id,
    )
    if status == "completed":  # post-call jobs ride this same transaction
        await intelligence.enqueue(session, call)


async def open_call(session: AsyncSession, call: Call, *, connecting: bool = False) -> None:
    """Store a new call, in the caller's transaction: its row as ``queued``, its first event
    and ``call.queued``; then ``connecting`` if its media socket is awaited now (inbound and
    bring-your-own-telephony calls; an outbound call waits for its dialler). Every way a call
    is made opens it here."""
    session.add(call)
    await log_event(
        session,
        call.id,
        "lifecycle",
        "status -> queued",
        data={"status": "queued", "reason": None, "connectionType": call.connection_type},
    )
    await emit(
        session,
        project_id=call.project_id,
        type="call.queued",
        data=call_payload(call),
        ordering_key=call.id,
    )
    if connecting:
        await transition(session, call, "connecting")
