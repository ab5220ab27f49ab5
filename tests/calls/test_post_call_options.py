"""A call's own ``postCall`` (``POST /v1/calls``, ``/v1/calls/inline``), ``POST /reprocess``
with a different ``postCall``, and transcript segments with their ``data``; on SQLite and
PostgreSQL, against the scripted OpenAI-compatible LLM."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from relay.calls.lifecycle import transition
from relay.calls.recovery import lock_call
from relay.ids import new_id
from relay.store.models import Call, CallAnalysis, TranscriptSegment
from tests.calls.test_intelligence import (
    answers,
    completed_call,
    relay_client,
    segments,
    settled,
)
from tests.hosted_llm.scripted_llm import ScriptedLLM

AGENT_POST_CALL = {"summary": True, "sentiment": True}
SCHEMA = {
    "type": "object",
    "properties": {"orderId": {"type": "string"}, "partySize": {"type": "integer"}},
    "required": ["orderId", "partySize"],
}


async def relay_for(database, app_client, scripted: ScriptedLLM):
    return await relay_client(
        database,
        app_client,
        scripted,
        post_call_retry_schedule="0,50ms",
        public_url="https://relay.example.com",
    )


async def agent(client, **fields) -> dict[str, Any]:
    body = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook", **fields}
    resp = await client.post("/v1/agents", json=body, headers=client.auth)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def snapshot_of(database, call_id: str) -> dict[str, Any]:
    async with database.session() as session:
        return (await session.get(Call, call_id)).agent_snapshot


async def complete(database, call_id: str) -> None:
    """Through the state machine, with the transcript the call would have left."""
    async with database.session() as session:
        session.add_all(segments(call_id))
    for status in ("in_progress", "completed"):
        async with database.session() as session:
            await transition(session, await lock_call(session, call_id), status)


async def test_a_calls_post_call_is_merged_over_its_agents(
    database, app_client, scripted: ScriptedLLM
):
    client = await relay_for(database, app_client, scripted)
    ava = await agent(client, postCall=AGENT_POST_CALL)
    override = {"sentiment": False, "structuredExtraction": {"schema": SCHEMA}}
    resp = await client.post(
        "/v1/calls",
        json={"agentId": ava["id"], "connectionType": "websocket", "postCall": override},
        headers=client.auth,
    )
    assert resp.status == 201, await resp.text()
    call_id = (await resp.json())["id"]
    snap = await snapshot_of(database, call_id)
    assert snap["post_call"] == {"summary": True, "sentiment": True}  # the agent's, untouched
    assert snap["post_call_override"] == {
        "sentiment": False,
        "structured_extraction": {"schema_": SCHEMA},
    }
    detail = await (await client.get(f"/v1/calls/{call_id}", headers=client.auth)).json()
    assert "postCallOverride" not in detail["agent"]

    scripted.add(answers(), answers())
    await complete(database, call_id)
    body = await settled(client, call_id)
    assert body["status"] == "completed", body
    assert body["summary"] and body["sentiment"] is None
    assert body["extraction"] == {"orderId": "B-77", "partySize": 4, "day": "Tuesday"}
    async with database.session() as session:
        row = await session.get(CallAnalysis, call_id)
    assert row.config == {
        "summary": True,
        "sentiment": False,
        "structured_extraction": {"schema_": SCHEMA},
    }


async def test_an_outbound_call_takes_a_post_call_too(database, app_client, scripted):
    client = await relay_for(database, app_client, scripted)
    ava = await agent(client)
    resp = await client.post("/v1/numbers", json={"agentId": ava["id"]}, headers=client.auth)
    assert resp.status == 201
    body = {"agentId": ava["id"], "to": "+14155550123", "postCall": {"evaluation": None}}
    resp = await client.post("/v1/calls", json=body, headers=client.auth)
    assert resp.status == 202, await resp.text()
    snap = await snapshot_of(database, (await resp.json())["id"])
    assert snap["post_call_override"] == {"evaluation": None}  # null: turn that part off


async def test_an_inline_call_carries_its_post_call(database, app_client, scripted):
    client = await relay_for(database, app_client, scripted)
    body = {
        "systemPrompt": "You book tables.",
        "connectionType": "websocket",
        "postCall": {"summary": False, "evaluation": {"criteria": ["Was polite"]}},
    }
    resp = await client.post("/v1/calls/inline", json=body, headers=client.auth)
    assert resp.status == 201, await resp.text()
    snap = await snapshot_of(database, (await resp.json())["id"])
    assert snap["post_call"] == {"summary": False, "evaluation": {"criteria": ["Was polite"]}}
    assert "post_call_override" not in snap


async def test_a_bad_post_call_is_refused_field_by_field(database, app_client, scripted):
    client = await relay_for(database, app_client, scripted)
    ava = await agent(client)
    bad = [
        ({"evaluation": {"criteria": []}}, "postCall.evaluation.criteria"),
        ({"sentiment": "very"}, "postCall.sentiment"),
        ({"summarise": True}, "postCall.summarise"),
        ({"structuredExtraction": {"instructions": "x"}}, "postCall.structuredExtraction.schema"),
        ("summary", "postCall"),
    ]
    for post_call, field in bad:
        resp = await client.post(
            "/v1/calls",
            json={"agentId": ava["id"], "connectionType": "websocket", "postCall": post_call},
            headers=client.auth,
        )
        assert resp.status == 422, post_call
        err = (await resp.json())["error"]
        assert err["field"] == field, err
        resp = await client.post(
            "/v1/calls/inline",
            json={"systemPrompt": "Hi", "connectionType": "websocket", "postCall": post_call},
            headers=client.auth,
        )
        assert resp.status == 422, post_call
        assert (await resp.json())["error"]["field"] == field


# --- reprocess with another postCall ---------------------------------------------------------


async def test_reprocess_runs_the_post_call_it_is_given(database, app_client, scripted):
    client = await relay_for(database, app_client, scripted)
    scripted.add(answers(), answers())
    call_id = await completed_call(database, client.project_id, AGENT_POST_CALL)
    first = await settled(client, call_id)
    assert first["summary"] and first["sentiment"] == "positive"

    scripted.add(answers())
    resp = await client.post(
        f"/v1/calls/{call_id}/reprocess",
        json={"postCall": {"summary": False, "evaluation": {"criteria": ["The agent was rude"]}}},
        headers=client.auth,
    )
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["status"] == "pending"
    body = await settled(client, call_id)
    assert body["status"] == "completed"
    assert body["summary"] is None and body["sentiment"] is None
    assert [v["criterion"] for v in body["evaluation"]] == ["The agent was rude"]
    assert body["evaluation"][0]["passed"] is False
    # the call's own configuration is unchanged for the next plain reprocess
    assert (await snapshot_of(database, call_id))["post_call"] == AGENT_POST_CALL


async def test_reprocess_with_an_empty_body_uses_the_calls_post_call(
    database, app_client, scripted
):
    client = await relay_for(database, app_client, scripted)
    call_id = await completed_call(database, client.project_id, AGENT_POST_CALL)
    for kwargs in ({"json": {}}, {}):
        resp = await client.post(f"/v1/calls/{call_id}/reprocess", headers=client.auth, **kwargs)
        assert resp.status == 202, await resp.text()
        async with database.session() as session:
            row = await session.get(CallAnalysis, call_id)
        assert row.config == AGENT_POST_CALL


async def test_reprocess_refuses_a_bad_body(database, app_client, scripted):
    client = await relay_for(database, app_client, scripted)
    call_id = await completed_call(database, client.project_id, AGENT_POST_CALL)
    cases = [
        ({"postCall": {"summary": False}}, 422, "empty_post_call"),
        ({"postCall": {"evaluation": {"criteria": []}}}, 422, "too_short"),
        ({"postcall": {}}, 422, "extra_forbidden"),
        ([1], 400, "invalid_request"),
    ]
    for body, status, code in cases:
        resp = await client.post(f"/v1/calls/{call_id}/reprocess", json=body, headers=client.auth)
        assert resp.status == status, body
        err = (await resp.json())["error"]
        assert code in (err["code"], *(d["code"] for d in err.get("details") or [])), err
    resp = await client.post(
        f"/v1/calls/{call_id}/reprocess",
        data="{",
        headers={**client.auth, "Content-Type": "application/json"},
    )
    assert resp.status == 400


async def test_reprocess_with_a_body_still_needs_a_completed_call(database, app_client, scripted):
    client = await relay_for(database, app_client, scripted)
    call_id = new_id("call")
    async with database.session() as session:
        session.add(
            Call(
                id=call_id,
                project_id=client.project_id,
                direction="inbound",
                connection_type="sim",
                status="in_progress",
                voice_mode="hosted",
                agent_snapshot={},
            )
        )
    resp = await client.post(
        f"/v1/calls/{call_id}/reprocess",
        json={"postCall": {"sentiment": True}},
        headers=client.auth,
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "call_not_completed"


# --- transcript data --------------------------------------------------------------------------


async def test_transcript_segments_carry_their_data(database, app_client, scripted):
    client = await relay_for(database, app_client, scripted)
    call_id = await completed_call(database, client.project_id, None, lines=[])
    tool = {
        "toolCallId": "call_abc",
        "name": "check_table",
        "arguments": {"partySize": 4},
        "result": {"free": True},
        "error": None,
        "status": 200,
        "durationMs": 41.5,
        "turnId": "turn_1",
    }
    rows = [
        ("user", "A table for four?", None),
        ("tool", 'check_table({"partySize": 4}) -> {"free": true}', tool),
        ("dtmf", "42", {"digits": "42"}),
    ]
    async with database.session() as session:
        for seq, (speaker, text, data) in enumerate(rows, start=1):
            session.add(
                TranscriptSegment(
                    id=new_id("seg"),
                    call_id=call_id,
                    seq=seq,
                    speaker=speaker,
                    text=text,
                    start_ms=seq * 100,
                    end_ms=seq * 100 + 50,
                    data=data,
                )
            )
    resp = await client.get(f"/v1/calls/{call_id}/transcript", headers=client.auth)
    assert resp.status == 200
    segments = (await resp.json())["segments"]
    assert [s["data"] for s in segments] == [None, tool, {"digits": "42"}]
    detail = await (await client.get(f"/v1/calls/{call_id}", headers=client.auth)).json()
    assert detail["transcript"]["segments"] == segments
    async with database.session() as session:
        stored = (
            await session.scalars(
                select(TranscriptSegment.data).where(TranscriptSegment.call_id == call_id)
            )
        ).all()
    assert tool in stored
