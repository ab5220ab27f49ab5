"""A carrier's answering-machine verdict (relay.calls.voicemail) on the store: stored on the
call, carried out where the call runs, or sent to the node that runs it (PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from relay.calls.media import LiveCall
from relay.calls.voicemail import HUNG_UP, LEFT_MESSAGE, carry_out, report
from relay.carriers import MachineVerdict
from relay.store.models import Call, CallLease, NodeCommand
from tests.engine.harness import call_setup, make_call
from tests.transports.support import ScriptedCall


@pytest.fixture
async def database(database):
    await database.migrate()
    return database


class _Line:
    sample_rate = 8000


async def outbound_call(database, voicemail: dict | None, holder: str | None) -> str:
    call_id = await make_call(database)
    async with database.session() as session:
        call = await session.get(Call, call_id)
        call.direction = "outbound"
        call.agent_snapshot = {"voicemail": voicemail} if voicemail else {}
        if holder is not None:
            session.add(CallLease(call_id=call_id, node_id=holder))
    return call_id


def live_call(call_id: str) -> tuple[dict[str, LiveCall], ScriptedCall]:
    scripted = ScriptedCall(call_setup(call_id, "http://127.0.0.1:9/h"), _Line())  # type: ignore[arg-type]
    return {call_id: LiveCall(scripted, asyncio.Event())}, scripted


async def answered_by(database, call_id: str) -> str | None:
    async with database.session() as session:
        return (await session.get(Call, call_id, populate_existing=True)).answered_by


async def test_a_machine_is_hung_up_on_where_the_call_runs(database):
    call_id = await outbound_call(database, {"action": "hangup"}, "node-a")
    live, scripted = live_call(call_id)
    await report(database, live, "node-a", call_id, MachineVerdict("machine"))
    assert scripted.left == (None, HUNG_UP)
    assert await answered_by(database, call_id) == "machine"


async def test_a_message_waits_for_the_greeting_to_be_over(database):
    setting = {"action": "leave_message", "message": "Call us back."}
    call_id = await outbound_call(database, setting, "node-a")
    live, scripted = live_call(call_id)
    await report(database, live, "node-a", call_id, MachineVerdict("machine"))
    assert scripted.left is None  # a machine, still greeting
    await report(database, live, "node-a", call_id, MachineVerdict("machine", greeting_over=True))
    assert scripted.left == ("Call us back.", LEFT_MESSAGE)


async def test_a_human_or_an_agent_without_voicemail_is_only_recorded(database):
    call_id = await outbound_call(database, {"action": "hangup"}, "node-a")
    live, scripted = live_call(call_id)
    await report(database, live, "node-a", call_id, MachineVerdict("human"))
    assert (await answered_by(database, call_id), scripted.left) == ("human", None)
    plain = await outbound_call(database, None, "node-a")
    live, scripted = live_call(plain)
    await report(database, live, "node-a", plain, MachineVerdict("machine", greeting_over=True))
    assert (await answered_by(database, plain), scripted.left) == ("machine", None)


async def test_a_verdict_for_a_call_another_node_runs_is_sent_there(database):
    call_id = await outbound_call(database, {"action": "hangup"}, "node-b")
    await report(database, {}, "node-a", call_id, MachineVerdict("machine"))
    async with database.session() as session:
        commands = (await session.execute(select(NodeCommand.node_id, NodeCommand.kind))).all()
    assert await answered_by(database, call_id) == "machine"
    if database.is_sqlite:  # one process holds every call: nobody to tell
        assert commands == []
    else:
        assert [tuple(c) for c in commands] == [("node-b", "voicemail")]
        # What node B does with it: the stored verdict, carried out on its live call.
        live, scripted = live_call(call_id)
        await carry_out(database, live, call_id)
        assert scripted.left == (None, HUNG_UP)


async def test_a_verdict_for_an_ended_call_changes_nothing(database):
    call_id = await outbound_call(database, {"action": "hangup"}, None)
    async with database.session() as session:
        (await session.get(Call, call_id)).status = "completed"
    live, scripted = live_call(call_id)
    await report(database, live, "node-a", call_id, MachineVerdict("machine"))
    assert (await answered_by(database, call_id), scripted.left) == (None, None)
