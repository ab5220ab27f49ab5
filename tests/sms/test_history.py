"""recentHistory across channels: a call's transcript and the texts between the same two
numbers, in time order, each entry with its channel."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from relay.ids import new_id
from relay.store.models import Agent, Call, TranscriptSegment, utcnow
from tests.sms.conftest import HANDSET, make_agent, sim_text


async def add_call(database, agent, *, frm, to, minutes_ago, lines, direction="inbound"):
    """A finished call with its transcript, stored the way the voice engine stores them."""
    started = utcnow() - timedelta(minutes=minutes_ago)
    async with database.session() as session:
        project_id = (
            await session.execute(select(Agent.project_id).where(Agent.id == agent.id))
        ).scalar_one()
        call = Call(
            id=new_id("call"),
            project_id=project_id,
            agent_id=agent.id,
            number_id=agent.number_id,
            direction=direction,
            connection_type="sim",
            from_number=frm,
            to_number=to,
            status="completed",
            voice_mode="webhook",
            agent_snapshot={},
            created_at=started - timedelta(seconds=2),
            started_at=started,
            ended_at=started + timedelta(minutes=1),
        )
        session.add(call)
        await session.flush()
        for seq, (speaker, text, start_ms, interrupted) in enumerate(lines):
            session.add(
                TranscriptSegment(
                    id=new_id("seg"),
                    call_id=call.id,
                    seq=seq,
                    speaker=speaker,
                    text=text,
                    start_ms=start_ms,
                    end_ms=start_ms + 1500,
                    interrupted=interrupted,
                )
            )
    return call


CALL_LINES = [
    ("agent", "Hi, this is Ava. How can I help?", 0, False),
    ("user", "Can I book a table for Tuesday?", 3000, False),
    ("tool", "lookup_availability", 4000, False),
    ("agent", "Sure, which time works", 5000, True),
]


def summary(history):
    return [(h["channel"], h["role"], h["content"], h.get("interrupted", False)) for h in history]


async def test_call_transcript_is_in_the_next_texts_history(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    await add_call(database, agent, frm=HANDSET, to=agent.number, minutes_ago=10, lines=CALL_LINES)
    await sim_text(client, auth, agent.number, "Actually, make it 3pm")
    history = hook.received[0]["recentHistory"]
    assert summary(history) == [
        ("voice", "agent", "Hi, this is Ava. How can I help?", False),
        ("voice", "user", "Can I book a table for Tuesday?", False),
        ("voice", "agent", "Sure, which time works", True),
    ]
    ats = [h["at"] for h in history]
    assert ats == sorted(ats) and all(a.endswith("Z") for a in ats)


async def test_texts_and_calls_interleave_in_time_order(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    hook.reply = lambda p: {"text": "Got it."}
    await sim_text(client, auth, agent.number, "I'll call you")
    await add_call(
        database,
        agent,
        frm=agent.number,
        to=HANDSET,
        minutes_ago=0,
        direction="outbound",
        lines=[("agent", "Calling you back as promised.", 0, False)],
    )
    await sim_text(client, auth, agent.number, "Thanks for the call")
    assert summary(hook.received[1]["recentHistory"]) == [
        ("sms", "user", "I'll call you", False),
        ("sms", "agent", "Got it.", False),
        ("voice", "agent", "Calling you back as promised.", False),
    ]


async def test_calls_with_other_numbers_stay_out(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    await add_call(
        database, agent, frm="+12025550177", to=agent.number, minutes_ago=5, lines=CALL_LINES
    )
    await sim_text(client, auth, agent.number, "hello")
    assert hook.received[0]["recentHistory"] == []


async def test_conversation_shows_the_same_history(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    await add_call(database, agent, frm=HANDSET, to=agent.number, minutes_ago=10, lines=CALL_LINES)
    got = await sim_text(client, auth, agent.number, "3pm please")
    conv = await (
        await client.get(f"/v1/conversations/{got['conversationId']}", headers=auth)
    ).json()
    assert [h["channel"] for h in conv["recentHistory"]] == ["voice"] * 3 + ["sms", "sms"]
    assert conv["recentHistory"][-1]["content"] == "You said: 3pm please"


async def test_a_line_added_to_a_call_is_in_the_next_texts_history(client, auth, hook, database):
    agent = await make_agent(client, auth, hook)
    call = await add_call(
        database, agent, frm=HANDSET, to=agent.number, minutes_ago=10, lines=CALL_LINES[:1]
    )
    await sim_text(client, auth, agent.number, "first")
    async with database.session() as session:
        session.add(
            TranscriptSegment(
                id=new_id("seg"),
                call_id=call.id,
                seq=1,
                speaker="user",
                text="One more thing",
                start_ms=2000,
                end_ms=3000,
                interrupted=False,
            )
        )
    await sim_text(client, auth, agent.number, "second")
    voice = [h["content"] for h in hook.received[1]["recentHistory"] if h["channel"] == "voice"]
    assert voice == ["Hi, this is Ava. How can I help?", "One more thing"]
