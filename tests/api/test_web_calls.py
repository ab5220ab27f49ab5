"""Web calls through the API: ``connectionType: "webrtc"`` on ``POST /v1/calls`` and
``/v1/calls/inline``, publishable keys and the ``web`` channel, and the WHIP endpoint's
answers to everything but a good offer (``tests/transports/test_webrtc.py`` has those)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relay import tokens
from relay.calls.media import MEDIA
from relay.handset.web import WebPage
from relay.state import APP_STATE
from relay.store.models import Call
from tests.transports.support import (
    ScriptedEngine,
    agent_with_number,
    lifecycle_types,
    phone_settings,
    wait_for,
)

ICE = [{"urls": ["stun:stun.example.com:3478"]}, {"urls": "turn:t.example.com", "username": "u"}]
OFFER_HEADERS = {"Content-Type": "application/sdp"}


@pytest.fixture
async def relay(database, app_client):
    client = await app_client(phone_settings(webrtc_ice_servers=ICE))
    client.app[MEDIA].engine = ScriptedEngine()
    return client


async def web_call(relay, key, agent_id, path="/v1/calls", **fields):
    body = {"agentId": agent_id, "connectionType": "webrtc", **fields}
    resp = await relay.post(path, json=body, headers=key)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def status_of(database, call_id):
    async with database.session() as session:
        return (await session.get(Call, call_id)).status


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **OFFER_HEADERS}


async def test_a_web_call_answers_201_with_join_url_token_and_ice_servers(relay, auth, database):
    agent, _ = await agent_with_number(relay, auth)
    call = await web_call(relay, auth, agent["id"], metadata={"page": "/pricing"})
    assert (call["status"], call["connectionType"]) == ("connecting", "webrtc")
    assert call["joinUrl"] == "https://relay.example.com/media/webrtc"
    key = relay.app[APP_STATE].signing_key
    assert tokens.verify(key, call["token"], "webrtc") == call["id"]
    with pytest.raises(tokens.TokenError):  # not a media socket's token
        tokens.verify(key, call["token"], "media")
    expires = datetime.fromisoformat(call["joinUrlExpiresAt"])
    assert timedelta(seconds=290) < expires - datetime.now(UTC) <= timedelta(seconds=300)
    assert call["iceServers"] == [
        {"urls": ["stun:stun.example.com:3478"], "username": None, "credential": None},
        {"urls": "turn:t.example.com", "username": "u", "credential": None},
    ]
    assert call["metadata"] == {"page": "/pricing"}
    async with database.session() as session:
        row = await session.get(Call, call["id"])
    assert row.agent_snapshot["transport"] == {"sample_rate": 48000}
    assert await lifecycle_types(database, call["id"]) == ["call.queued", "call.connecting"]


async def test_an_inline_web_call_gets_a_token_too(relay, auth):
    body = {"systemPrompt": "Be brief.", "connectionType": "webrtc"}
    resp = await relay.post("/v1/calls/inline", json=body, headers=auth)
    assert resp.status == 201
    call = await resp.json()
    assert call["joinUrl"].endswith("/media/webrtc") and call["token"]
    assert call["status"] == "connecting"


async def test_a_publishable_key_needs_the_web_channel(relay, auth, make_key):
    agent, _ = await agent_with_number(relay, auth)
    web = await make_key("proj-a", kind="publishable", channels=["web"], agents=[agent["id"]])
    assert (await web_call(relay, web, agent["id"]))["token"]
    phone = await make_key("proj-a", kind="publishable", channels=["phone", "websocket"])
    resp = await relay.post(
        "/v1/calls", json={"agentId": agent["id"], "connectionType": "webrtc"}, headers=phone
    )
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "key_scope_violation"
    resp = await relay.post(
        "/v1/calls/inline",
        json={"systemPrompt": "x", "connectionType": "webrtc"},
        headers=web,
    )
    assert resp.status == 403  # inline calls choose their own brain: secret keys only


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_call_token"),
        ({"Authorization": "Basic dTpw"}, "missing_call_token"),
        ({"Authorization": "Bearer not-a-token"}, "invalid_call_token"),
    ],
)
async def test_an_offer_without_a_good_token_is_401(relay, headers, code):
    resp = await relay.post("/media/webrtc", data="v=0\r\n", headers={**headers, **OFFER_HEADERS})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == code
    assert resp.headers["Access-Control-Allow-Origin"] == "*"  # the page can read why


async def test_an_expired_token_and_another_purposes_token_are_refused(relay, auth, database):
    agent, _ = await agent_with_number(relay, auth)
    call = await web_call(relay, auth, agent["id"])
    key = relay.app[APP_STATE].signing_key
    expired = tokens.issue(key, call["id"], "webrtc", -1)
    resp = await relay.post("/media/webrtc", data="v=0\r\n", headers=bearer(expired))
    assert (resp.status, (await resp.json())["error"]["code"]) == (401, "call_token_expired")
    media = tokens.issue(key, call["id"], "media", 60)
    resp = await relay.post("/media/webrtc", data="v=0\r\n", headers=bearer(media))
    assert (resp.status, (await resp.json())["error"]["code"]) == (401, "invalid_call_token")
    assert await status_of(database, call["id"]) == "connecting"


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("application/json", '{"sdp": "v=0"}', 415, "unsupported_media_type"),
        ("text/plain", "v=0\r\n", 415, "unsupported_media_type"),
        ("application/sdp", "hello", 400, "invalid_sdp"),
        ("application/sdp", "v=0\r\n\x00", 400, "invalid_sdp"),
        ("application/sdp", "v=0\r\n" + "a=x\r\n" * 20000, 400, "invalid_sdp"),
        ("application/sdp", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", 400, "no_audio"),
        (
            "application/sdp",
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n",
            400,
            "no_audio",
        ),
        (
            "application/sdp",
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n",
            400,
            "invalid_sdp",
        ),
    ],
)
async def test_bad_offers_are_refused_and_the_call_still_waits(
    relay, auth, database, content_type, body, status, code
):
    agent, _ = await agent_with_number(relay, auth)
    call = await web_call(relay, auth, agent["id"])
    headers = {"Authorization": f"Bearer {call['token']}", "Content-Type": content_type}
    resp = await relay.post("/media/webrtc", data=body.encode(), headers=headers)
    assert resp.status == status, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == code and error["message"]
    assert await status_of(database, call["id"]) == "connecting"
    assert relay.app[MEDIA].engine.calls == []


async def test_a_token_opens_one_session_only(relay, auth, database):
    agent, _ = await agent_with_number(relay, auth)
    call = await web_call(relay, auth, agent["id"])
    page = await WebPage.join(relay, "/media/webrtc", call["token"])
    assert page.location == f"/media/webrtc/{call['id']}"
    second = WebPage()
    resp = await relay.post(
        "/media/webrtc", data=await second.offer(), headers=bearer(call["token"])
    )
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "call_token_used"
    await second.close()
    resp = await relay.delete(page.location, headers={"Authorization": f"Bearer {call['token']}"})
    assert resp.status == 200
    await wait_for(lambda: status_of(database, call["id"]), within=10)

    async def completed():
        return await status_of(database, call["id"]) == "completed"

    await wait_for(completed, within=10)
    assert await lifecycle_types(database, call["id"]) == [
        "call.queued",
        "call.connecting",
        "call.in_progress",
        "call.completed",
        "transcript.ready",
    ]
    await page.close()


async def test_a_hang_up_needs_the_calls_own_token(relay, auth, database):
    agent, _ = await agent_with_number(relay, auth)
    call = await web_call(relay, auth, agent["id"])
    other = await web_call(relay, auth, agent["id"])
    page = await WebPage.join(relay, "/media/webrtc", call["token"])
    for token, status in ((other["token"], 404), ("junk", 401)):
        resp = await relay.delete(page.location, headers={"Authorization": f"Bearer {token}"})
        assert resp.status == status
    resp = await relay.delete(f"/media/webrtc/{other['id']}", headers=bearer(other["token"]))
    assert resp.status == 404  # no session: its offer never came
    assert await status_of(database, call["id"]) == "in_progress"
    await page.close()


async def test_the_whip_endpoint_answers_cors_preflights_for_any_origin(relay):
    for path in ("/media/webrtc", "/media/webrtc/call_x"):
        resp = await relay.options(
            path,
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        assert "Access-Control-Allow-Credentials" not in resp.headers


async def test_the_browser_module_is_served_to_any_origin(relay):
    resp = await relay.get("/widget/relay-call.js", headers={"Origin": "https://shop.example"})
    assert resp.status == 200
    assert resp.content_type == "text/javascript"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    source = await resp.text()
    assert "export class RelayCall" in source and 'customElements.define("relay-call"' in source


async def test_openapi_documents_web_calls_and_whip(relay):
    doc = await (await relay.get("/openapi.json")).json()
    created = doc["components"]["schemas"]["CallCreated"]["properties"]
    assert {"joinUrl", "token", "iceServers"} <= set(created)
    assert "webrtc" in str(doc["components"]["schemas"]["CallCreate"]["properties"])
    whip = doc["paths"]["/media/webrtc"]["post"]
    assert "application/sdp" in whip["requestBody"]["content"]
    assert {"201", "400", "401", "409", "415"} <= set(whip["responses"])
    assert "delete" in doc["paths"]["/media/webrtc/{call_id}"]


async def test_a_web_calls_token_opens_no_media_socket(relay, auth):
    agent, _ = await agent_with_number(relay, auth)
    call = await web_call(relay, auth, agent["id"])
    for path in ("/media/websocket", "/media/twilio"):
        resp = await relay.get(f"{path}?token={call['token']}")
        assert resp.status == 403, path
