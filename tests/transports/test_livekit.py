"""LiveKit rooms for web calls: the tokens' grants, and the room made through a local server
that speaks LiveKit's RoomService (Twirp, protobuf bodies, a signed bearer JWT)."""

from __future__ import annotations

import time

import aiohttp
import jwt  # PyJWT, livekit-api's own dependency
import pytest
from aiohttp import web
from livekit import api

from relay.config import Settings
from relay.transports.livekit import (
    LiveKitConfig,
    LiveKitError,
    agent_token,
    caller_token,
    open_room,
)

KEY, SECRET = "APIrelaytest", "s" * 40
CONFIG = LiveKitConfig("http://lk.invalid", KEY, SECRET)


def claims(token: str) -> api.Claims:
    return api.TokenVerifier(KEY, SECRET).verify(token)


def test_the_callers_token_joins_its_room_only_for_five_minutes():
    token = caller_token(CONFIG, "relay-call_1", "caller-call_1")
    got = claims(token)
    assert got.identity == "caller-call_1"
    assert got.video.room == "relay-call_1" and got.video.room_join is True
    assert not got.video.room_create and not got.video.room_admin
    assert got.video.can_publish_sources == ["microphone"]
    assert got.video.can_publish_data is False
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert 290 <= exp - time.time() <= 300


def test_the_agents_token_is_an_agent_in_the_same_room():
    got = claims(agent_token(CONFIG, "relay-call_1"))
    assert got.identity == "relay-agent" and got.kind == "agent"
    assert got.video.room == "relay-call_1" and got.video.can_publish_data is True


def test_livekits_own_variable_names_are_read(monkeypatch):
    monkeypatch.setenv("LIVEKIT_URL", "wss://lk.example.com")
    monkeypatch.setenv("LIVEKIT_API_KEY", KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", SECRET)
    settings = Settings()
    assert (settings.livekit_url, settings.livekit_api_key) == ("wss://lk.example.com", KEY)


class FakeLiveKit:
    """LiveKit's RoomService.CreateRoom as the server answers it."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.requests: list[api.CreateRoomRequest] = []

    async def create_room(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers["Authorization"].partition(" ")
        grants = api.TokenVerifier(KEY, SECRET).verify(token).video
        if scheme != "Bearer" or not grants or not grants.room_create:
            return web.json_response({"code": "unauthenticated", "msg": "no"}, status=401)
        assert request.content_type == "application/protobuf"
        body = api.CreateRoomRequest.FromString(await request.read())
        self.requests.append(body)
        if self.refuse:
            return web.json_response(
                {"code": "resource_exhausted", "msg": "room limit reached"}, status=429
            )
        room = api.Room(sid="RM_test", name=body.name, max_participants=body.max_participants)
        return web.Response(body=room.SerializeToString(), content_type="application/protobuf")


@pytest.mark.parametrize("refuse", [False, True])
async def test_a_call_gets_its_own_room(aiohttp_server, refuse):
    fake = FakeLiveKit(refuse)
    app = web.Application()
    app.router.add_post("/twirp/livekit.RoomService/CreateRoom", fake.create_room)
    server = await aiohttp_server(app)
    config = LiveKitConfig(str(server.make_url("")).rstrip("/"), KEY, SECRET)
    async with aiohttp.ClientSession() as http:
        if refuse:
            with pytest.raises(LiveKitError) as info:
                await open_room(config, "call_1", http)
            assert info.value.status == 429 and "room limit" in str(info.value)
            return
        room = await open_room(config, "call_1", http)
    [request] = fake.requests
    assert (request.name, request.max_participants) == ("relay-call_1", 2)
    assert request.empty_timeout > 0 and request.departure_timeout > 0
    assert (room.room, room.sid) == ("relay-call_1", "RM_test")
    assert claims(room.caller_token).video.room == "relay-call_1"
    assert claims(room.agent_token).identity == "relay-agent"


async def test_a_livekit_that_does_not_answer_is_our_error(unused_tcp_port):
    config = LiveKitConfig(f"http://127.0.0.1:{unused_tcp_port}", KEY, SECRET)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(LiveKitError) as info:
            await open_room(config, "call_1", http)
    assert info.value.status == 0
