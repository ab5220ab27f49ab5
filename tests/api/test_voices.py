"""GET /v1/voices, and voice / language / stt / tts checked against it."""

from __future__ import annotations

AGENT = {"name": "Ava", "webhookUrl": "http://127.0.0.1:9/hook"}


async def test_voices_lists_what_this_relay_installed(client, auth):
    resp = await client.get("/v1/voices", headers=auth)
    assert resp.status == 200
    body = await resp.json()
    by_id = {v["id"]: v for v in body["data"]}
    assert by_id["joe"] == {
        "id": "joe",
        "engine": "piper",
        "language": "en-US",
        "name": "Joe (Piper, neural)",
    }
    assert by_id["espeak-es"]["language"] == "es-ES"
    assert "es-ES" in body["languages"] and "en-US" in body["languages"]
    hears = {r["engine"]: r["languages"] for r in body["recognizers"]}
    assert hears["whisper"] == ["en"] and "es" in hears["whisper-multilingual"]


async def test_voices_needs_a_key(client):
    assert (await client.get("/v1/voices")).status == 401


async def test_an_agent_in_spanish_is_made_with_a_spanish_voice(client, auth):
    body = {**AGENT, "language": "es-ES", "voice": "espeak-es"}
    resp = await client.post("/v1/agents", json=body, headers=auth)
    assert resp.status == 201, await resp.text()
    agent = await resp.json()
    assert (agent["language"], agent["voice"]) == ("es-ES", "espeak-es")


async def test_an_unknown_voice_is_refused_with_the_choices(client, auth):
    resp = await client.post("/v1/agents", json={**AGENT, "voice": "alloy"}, headers=auth)
    assert resp.status == 422
    err = (await resp.json())["error"]
    assert (err["code"], err["field"]) == ("voice_unavailable", "voice")
    assert "joe" in err["details"][0]["choices"]


async def test_a_language_nobody_here_speaks_is_refused(client, auth):
    resp = await client.post("/v1/agents", json={**AGENT, "language": "ja-JP"}, headers=auth)
    assert resp.status == 422
    err = (await resp.json())["error"]
    assert (err["code"], err["field"]) == ("language_unavailable", "language")
    assert "fr-FR" in err["details"][0]["choices"]


async def test_a_patch_is_checked_against_what_the_agent_keeps(client, auth):
    created = await (
        await client.post("/v1/agents", json={**AGENT, "voice": "joe"}, headers=auth)
    ).json()
    url = f"/v1/agents/{created['id']}"
    resp = await client.patch(url, json={"language": "fr-FR"}, headers=auth)
    assert resp.status == 422  # joe speaks English
    assert (await resp.json())["error"]["code"] == "voice_language_mismatch"
    resp = await client.patch(url, json={"language": "fr-FR", "voice": None}, headers=auth)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["language"] == "fr-FR"
    # A PATCH of anything else does not re-check (an agent stored earlier keeps working).
    assert (await client.patch(url, json={"name": "Ava 2"}, headers=auth)).status == 200


async def test_an_inline_call_is_checked_too(client, auth):
    body = {"systemPrompt": "Be brief.", "voice": "espeak-de", "language": "en-US"}
    resp = await client.post("/v1/calls/inline", json=body, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "voice_language_mismatch"
