"""Answering machines on outbound calls: the carrier's verdict, stored, and the agent's
``voicemail`` setting carried out.

An outbound call whose agent has ``voicemail`` asks its carrier for answering-machine
detection (``DialRequest.detect_machine``). The carrier's signed callbacks become a
:class:`~relay.carriers.MachineVerdict` and reach :func:`report` (on whichever node they land):

* the call's ``answered_by`` is stored (``human``, ``machine``, ``unknown``) with a
  ``telephony`` event;
* on ``machine`` with ``action: hangup`` the call ends ``completed`` at once; with
  ``leave_message``, once the carrier says the greeting is over (the beep), the engine
  speaks the message (not interruptible) and the call ends ``completed``. Either way the
  end's event says ``voicemail`` and why (a completed call has no failure reason).

The call runs on the node that holds its media socket: a verdict that lands elsewhere is
sent there as a ``voicemail`` command (:mod:`relay.calls.commands`), which acts on what is
stored. A verdict that beats the engine's start waits for it (up to
:data:`START_WAIT_SECONDS`); one for a call not running anywhere is only stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from relay.agent_config import AgentConfig
from relay.calls import commands
from relay.calls.event_log import log_event
from relay.calls.lifecycle import LIVE
from relay.calls.media import LiveCall
from relay.calls.recovery import lock_call
from relay.carriers import MachineVerdict
from relay.events.writing import writing
from relay.logs import get_logger
from relay.store.db import Database
from relay.store.models import Call

log = get_logger("relay.calls.voicemail")

START_WAIT_SECONDS = 3.0
# The events a call ends with (a completed call has no failure reason to say it).
HUNG_UP = "voicemail: an answering machine answered; hung up"
LEFT_MESSAGE = "voicemail: an answering machine answered; left the message and hung up"
Verdict = MachineVerdict


@dataclass(frozen=True, slots=True)
class VoicemailSetting:
    """An agent's ``voicemail``, as a call froze it."""

    action: Literal["hangup", "leave_message"]
    message: str | None = None

    @classmethod
    def of(cls, snapshot: Mapping[str, object] | None) -> VoicemailSetting | None:
        """The setting a call froze with its agent (validated by the API when stored)."""
        stored = AgentConfig.from_stored(dict(snapshot or {})).voicemail
        if not stored or stored.get("action") not in ("hangup", "leave_message"):
            return None
        message = stored.get("message")
        return cls(stored["action"], message if isinstance(message, str) else None)

    def acts_on(self, verdict: Verdict) -> bool:
        if verdict.answered_by != "machine":
            return False
        return self.action == "hangup" or verdict.greeting_over


async def report(
    db: Database, live: Mapping[str, LiveCall], node_id: str, call_id: str, verdict: Verdict
) -> None:
    """Store the verdict on a live call and carry out its agent's ``voicemail`` setting,
    here or (by command) on the node that runs the call."""
    async with writing(db) as session:
        call = await lock_call(session, call_id)
        if call is None or call.status not in LIVE:
            return
        first = call.answered_by is None or call.answered_by == "unknown"
        if first or verdict.answered_by == "machine":
            call.answered_by = verdict.answered_by
        await log_event(
            session,
            call_id,
            "telephony",
            f"answering machine detection: {verdict.answered_by}"
            + (" (greeting over)" if verdict.greeting_over else ""),
            data={"answeredBy": verdict.answered_by, "greetingOver": verdict.greeting_over},
        )
        setting = VoicemailSetting.of(call.agent_snapshot)
        if setting is None or not setting.acts_on(verdict):
            return
        if call_id not in live and not db.is_sqlite:
            node = await commands.holder(session, call_id)
            if node is not None and node != node_id:
                await commands.send(session, node, call_id, commands.VOICEMAIL)
                return
    await carry_out(db, live, call_id)


async def _running(live: Mapping[str, LiveCall], call_id: str) -> LiveCall | None:
    # A verdict may beat the engine's start by a few milliseconds (the socket is open, the
    # engine not yet): wait that long, not more.
    for _ in range(int(START_WAIT_SECONDS / 0.05)):
        if (running := live.get(call_id)) is not None:
            return running
        await asyncio.sleep(0.05)
    return live.get(call_id)


async def carry_out(db: Database, live: Mapping[str, LiveCall], call_id: str) -> None:
    """Do what the call's ``voicemail`` setting says, now (the verdict is stored)."""
    running = await _running(live, call_id)
    if running is None:
        log.info("voicemail_call_not_running", call_id=call_id)
        return
    async with db.session() as session:
        call = await session.get(Call, call_id)
        setting = VoicemailSetting.of(call.agent_snapshot if call is not None else None)
    if setting is None:
        return
    if setting.action == "leave_message" and setting.message:
        await running.handle.leave(setting.message, LEFT_MESSAGE)
    else:
        await running.handle.leave(None, HUNG_UP)


__all__ = ["Verdict", "VoicemailSetting", "carry_out", "report"]
