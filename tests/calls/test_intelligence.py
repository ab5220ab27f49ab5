"""Post-call intelligence end to end: a call completes, the queued job runs on the app's
worker against a scripted OpenAI-compatible LLM, results are stored, validated and sent as
``call.analyzed``; ``GET /summary`` and ``POST /reprocess``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import pytest
from sqlalchemy import select

from relay.auth import create_key
from relay.calls.lifecycle import transition
from relay.config import Settings
from relay.ids import new_id
from relay.store.models import Call, CallEvent, LifecycleEvent, TranscriptSegment
from tests.hosted_llm.scripted_llm import ScriptedLLM

SCHEMA = {
    "type": "object",
    "properties": {
        "orderId": {"type": "string"},
        "partySize": {"type": "integer", "minimum": 1},
        "day": {"type": ["string", "null"]},
    },
    "required": ["orderId", "partySize"],
    "additionalProperties": False,
}
POST_CALL = {
    "summary": True,
    "sentiment": True,
    "structured_extraction": {"schema": SCHEMA, "instructions": "Day names in English."},
    "evaluation": {"criteria": ["The agent confirmed the booking", "The agent was rude"]},
}
LINES = [
    ("agent", "Hi, this is Ava from Bella's. How can I help?"),
    ("user", "I'd like a table for four on Tuesday, booking reference B-77."),
    ("agent", "Done: four people on Tuesday, reference B-77. See you then!"),
    ("user", "Great, thanks so much!"),
]


def answers(extraction: list[str] | None = None):
    """A script that answers each analysis task the way a model would."""
    extraction = list(extraction or ['{"orderId": "B-77", "partySize": 4, "day": "Tuesday"}'])

    def script(body: dict[str, Any]) -> list[tuple[Any, ...]]:
        task = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        if task.startswith("Summarise"):
            return [("text", "A caller booked a table for four on Tuesday (ref B-77).")]
        if task.startswith("How did the caller feel"):
            return [("text", '{"sentiment": "positive"}')]
        if task.startswith("Extract") or task.startswith("That is invalid"):
            return [("text", extraction.pop(0) if len(extraction) > 1 else extraction[0])]
        if "confirmed the booking" in task:
            return [("text", '{"passed": true, "score": 9, "reasoning": "It read it back."}')]
        return [("text", '{"passed": false, "score": 0, "reasoning": "Polite throughout."}')]

    return script


async def relay_client(database, app_client, scripted: ScriptedLLM, **settings: Any):
    """A test client of a relay whose LLM is ``scripted``, with a key of project ``proj-a``
    (``client.auth``, ``client.project_id``)."""
    options: dict[str, Any] = {
        "allow_private_webhooks": True,
        "llm_base_url": scripted.url,
        "llm_model": "tiny",
        "post_call_poll_seconds": 0.05,
        "post_call_retry_schedule": "0,50ms,50ms",
    }
    client = await app_client(Settings(**{**options, **settings}))
    async with database.session() as session:
        raw, key = await create_key(session, "proj-a")
    client.auth = {"Authorization": f"Bearer {raw}"}
    client.project_id = key.project_id
    return client


@pytest.fixture
async def relay(app_client, database, scripted: ScriptedLLM):
    return await relay_client(database, app_client, scripted)


def segments(call_id: str, lines=LINES) -> list[TranscriptSegment]:
    """The transcript ``lines`` (speaker, text) leave, one second apart."""
    return [
        TranscriptSegment(
            id=new_id("seg"),
            call_id=call_id,
            seq=seq,
            speaker=speaker,
            text=text,
            start_ms=seq * 1000,
            end_ms=seq * 1000 + 900,
        )
        for seq, (speaker, text) in enumerate(lines, start=1)
    ]


async def completed_call(db, project_id: str, post_call: dict | None, lines=LINES, **snap) -> str:
    """A call that ran and completed through the state machine, with its transcript."""
    call_id = new_id("call")
    async with db.session() as session:
        session.add(
            Call(
                id=call_id,
                project_id=project_id,
                direction="inbound",
                connection_type="sim",
                from_number="+61412345678",
                to_number="+61255501234",
                status="in_progress",
                voice_mode="hosted",
                agent_snapshot={"post_call": post_call, **snap},
            )
        )
        session.add_all(segments(call_id, lines))
    async with db.session() as session:
        call = await session.get(Call, call_id)
        await transition(session, call, "completed")
    return call_id


async def settled(client, call_id: str, within: float = 45.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        body = await (await client.get(f"/v1/calls/{call_id}/summary", headers=client.auth)).json()
        if body["status"] not in ("pending",) or asyncio.get_running_loop().time() > deadline:
            return body
        await asyncio.sleep(0.05)


async def analyzed_events(db, call_id: str) -> list[dict[str, Any]]:
    async with db.session() as session:
        rows = await session.scalars(
            select(LifecycleEvent)
            .where(LifecycleEvent.type == "call.analyzed", LifecycleEvent.ordering_key == call_id)
            .order_by(LifecycleEvent.id)
        )
        return [r.data for r in rows]


async def test_a_completed_call_is_analysed_and_announced(relay, database, scripted):
    scripted.add(*[answers()] * 5)
    call_id = await completed_call(database, relay.project_id, POST_CALL)
    body = await settled(relay, call_id)

    assert body["status"] == "completed", body
    assert body["summary"] == "A caller booked a table for four on Tuesday (ref B-77)."
    assert body["sentiment"] == "positive"
    assert body["extraction"] == {"orderId": "B-77", "partySize": 4, "day": "Tuesday"}
    jsonschema.validate(body["extraction"], SCHEMA)
    assert body["evaluation"] == [
        {
            "criterion": "The agent confirmed the booking",
            "passed": True,
            "score": 9,
            "reasoning": "It read it back.",
        },
        {
            "criterion": "The agent was rude",
            "passed": False,
            "score": 0,
            "reasoning": "Polite throughout.",
        },
    ]
    assert body["errors"] == [] and body["attempts"] == 1
    assert body["model"] == "openai:tiny" and body["durationMs"] >= 0

    # every task reads the same transcript first; JSON tasks are constrained by schema
    first = scripted.requests[0]
    transcript = first["messages"][0]["content"]
    assert "Caller: I'd like a table for four on Tuesday, booking reference B-77." in transcript
    assert all(r["messages"][0]["content"] == transcript for r in scripted.requests)
    extraction = next(r for r in scripted.requests if "Extract" in r["messages"][1]["content"])
    assert extraction["response_format"]["json_schema"]["schema"] == SCHEMA
    assert "Day names in English." in extraction["messages"][1]["content"]
    assert len(scripted.requests) == 5  # summary, sentiment, extraction, two criteria

    (event,) = await analyzed_events(database, call_id)
    assert event["status"] == "completed" and event["callId"] == call_id
    assert event["extraction"] == body["extraction"] and event["sentiment"] == "positive"


async def test_an_answer_that_breaks_the_schema_is_asked_again_once(relay, database, scripted):
    bad, good = '{"orderId": "B-77", "partySize": "four"}', '{"orderId": "B-77", "partySize": 4}'
    plan = {"summary": False, "structured_extraction": {"schema": SCHEMA}}
    script = answers([bad, good])
    scripted.add(script, script)
    call_id = await completed_call(database, relay.project_id, plan)
    body = await settled(relay, call_id)
    assert body["status"] == "completed" and body["errors"] == []
    assert body["extraction"] == {"orderId": "B-77", "partySize": 4}
    retry = scripted.messages(1)
    assert retry[-2] == {"role": "assistant", "content": bad}
    assert retry[-1]["content"] == (
        "That is invalid: partySize: 'four' is not of type 'integer'. Answer again."
    )


async def test_a_second_bad_answer_is_reported_and_the_rest_kept(relay, database, scripted):
    bad = '{"orderId": 77, "partySize": 2}'
    plan = {"summary": True, "structured_extraction": {"schema": SCHEMA}}
    scripted.add(answers([bad]), answers([bad]), answers([bad]))
    call_id = await completed_call(database, relay.project_id, plan)
    body = await settled(relay, call_id)
    assert body["status"] == "completed"
    assert body["summary"].startswith("A caller booked")
    assert body["extraction"] is None
    assert body["errors"] == [
        {
            "task": "extraction",
            "code": "invalid_output",
            "message": "the model's answer broke the schema: orderId: 77 is not of type 'string'",
        }
    ]


async def test_a_down_llm_is_retried_then_the_job_fails(relay, database, scripted):
    scripted.add(*[[("status", 503, "overloaded")]] * 3)
    call_id = await completed_call(database, relay.project_id, {"summary": True})
    body = await settled(relay, call_id)
    assert body["status"] == "failed" and body["attempts"] == 3
    assert body["errors"][0]["task"] == "analysis"
    assert body["errors"][0]["code"] == "http_status"
    assert len(scripted.requests) == 3
    (event,) = await analyzed_events(database, call_id)
    assert event["status"] == "failed" and event["errors"][0]["code"] == "http_status"
    async with database.session() as session:
        logged = (
            await session.scalars(
                select(CallEvent.message).where(
                    CallEvent.call_id == call_id, CallEvent.source == "post_call"
                )
            )
        ).all()
    assert sum("will retry" in m for m in logged) == 2
    assert any("failed after 3 attempts" in m for m in logged)


async def test_a_call_nobody_spoke_on_needs_no_model(relay, database, scripted):
    plan = {"summary": True, "sentiment": True, "evaluation": {"criteria": ["Was helpful"]}}
    call_id = await completed_call(database, relay.project_id, plan, lines=[])
    body = await settled(relay, call_id)
    assert body["status"] == "completed"
    assert body["summary"] == "No one spoke on this call." and body["sentiment"] == "neutral"
    assert body["evaluation"][0]["passed"] is False
    assert scripted.requests == []


async def test_the_calls_override_is_merged_over_the_agents_post_call(relay, database, scripted):
    scripted.add(answers(), answers())
    override = {"summary": False, "sentiment": True}
    call_id = await completed_call(
        database, relay.project_id, {"summary": True}, post_call_override=override
    )
    body = await settled(relay, call_id)
    assert body["summary"] is None and body["sentiment"] == "positive"
    assert len(scripted.requests) == 1


async def test_no_post_call_means_nothing_to_do(relay, database, scripted):
    call_id = await completed_call(database, relay.project_id, None)
    await asyncio.sleep(0.2)
    body = await (await relay.get(f"/v1/calls/{call_id}/summary", headers=relay.auth)).json()
    assert body == {
        "callId": call_id,
        "object": "call.analysis",
        "status": "not_requested",
        "summary": None,
        "sentiment": None,
        "extraction": None,
        "evaluation": None,
        "errors": [],
        "attempts": 0,
        "model": None,
        "durationMs": None,
        "createdAt": None,
        "completedAt": None,
    }
    assert scripted.requests == []


async def test_reprocess_runs_it_again_with_a_new_transcript(relay, database, scripted):
    scripted.add(answers())
    call_id = await completed_call(database, relay.project_id, {"summary": True})
    assert (await settled(relay, call_id))["status"] == "completed"

    async with database.session() as session:
        seg = await session.scalar(
            select(TranscriptSegment).where(
                TranscriptSegment.call_id == call_id, TranscriptSegment.seq == 2
            )
        )
        seg.text = "Actually make that six people."
    scripted.add([("text", "The caller changed the booking to six.")])
    resp = await relay.post(f"/v1/calls/{call_id}/reprocess", headers=relay.auth)
    assert resp.status == 202
    assert (await resp.json())["status"] == "pending"
    body = await settled(relay, call_id)
    assert body["summary"] == "The caller changed the booking to six."
    assert "six people" in scripted.messages(-1)[0]["content"]
    assert len(await analyzed_events(database, call_id)) == 2


async def test_reprocess_without_post_call_makes_a_summary(relay, database, scripted):
    scripted.add(answers())
    call_id = await completed_call(database, relay.project_id, None)
    resp = await relay.post(f"/v1/calls/{call_id}/reprocess", headers=relay.auth)
    assert resp.status == 202
    body = await settled(relay, call_id)
    assert body["status"] == "completed" and body["summary"].startswith("A caller booked")


async def test_reprocess_refuses_a_call_that_has_not_completed(relay, database):
    call_id = new_id("call")
    async with database.session() as session:
        session.add(
            Call(
                id=call_id,
                project_id=relay.project_id,
                direction="inbound",
                connection_type="sim",
                status="in_progress",
                voice_mode="hosted",
                agent_snapshot={"post_call": {"summary": True}},
            )
        )
    resp = await relay.post(f"/v1/calls/{call_id}/reprocess", headers=relay.auth)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["code"] == "call_not_completed" and "in_progress" in err["message"]


async def test_another_projects_call_is_not_found(relay, database, app_client):
    call_id = await completed_call(database, relay.project_id, None)
    async with database.session() as session:
        raw, _ = await create_key(session, "proj-b")
    other = {"Authorization": f"Bearer {raw}"}
    assert (await relay.get(f"/v1/calls/{call_id}/summary", headers=other)).status == 404
    assert (await relay.post(f"/v1/calls/{call_id}/reprocess", headers=other)).status == 404
    assert (await relay.get("/v1/calls/call_nope/summary", headers=relay.auth)).status == 404


def test_the_evaluation_schema_is_a_valid_json_schema():
    from relay.calls.intelligence import EVALUATION_SCHEMA, SENTIMENT_SCHEMA

    for schema in (EVALUATION_SCHEMA, SENTIMENT_SCHEMA):
        jsonschema.Draft202012Validator.check_schema(schema)
    assert json.loads(json.dumps(EVALUATION_SCHEMA)) == EVALUATION_SCHEMA
