"""LiveKit rooms for web calls: the scale-out path, when ``LIVEKIT_URL`` is configured.

One room per call (``relay-<callId>``, two participants at most), created through LiveKit's
RoomService with ``livekit-api``; the caller's page gets a room-scoped token good for five
minutes (as the web call's own token is), and the relay gets the agent participant's token
to join the same room and carry the call's audio to the engine (README, "Web calls",
"LiveKit rooms": that join is the part not built yet).

    LiveKitError          the room could not be made: LiveKit answered an error or not at all
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import aiohttp
from livekit import api

ROOM_TOKEN_TTL = timedelta(minutes=5)
# A room nobody joined, or everybody left, closes after this long.
EMPTY_ROOM_SECONDS = 60
DEPARTURE_SECONDS = 5
AGENT_IDENTITY = "relay-agent"


class LiveKitError(Exception):
    """LiveKit refused or failed the request (``status`` is its HTTP status, 0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class LiveKitConfig:
    url: str
    api_key: str
    api_secret: str


@dataclass(frozen=True, slots=True)
class LiveKitRoom:
    """A call's room: where the page connects (``url``, ``caller_token``) and how the relay
    joins it as the agent (``agent_token``)."""

    url: str
    room: str
    sid: str
    caller_token: str
    agent_token: str


def room_name(call_id: str) -> str:
    return f"relay-{call_id}"


def caller_token(config: LiveKitConfig, room: str, identity: str) -> str:
    """The page's token: join this room only, publish its microphone, hear the agent."""
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=False,
        can_publish_sources=["microphone"],
    )
    return (
        api.AccessToken(config.api_key, config.api_secret)
        .with_identity(identity)
        .with_name("caller")
        .with_grants(grants)
        .with_ttl(ROOM_TOKEN_TTL)
        .to_jwt()
    )


def agent_token(config: LiveKitConfig, room: str) -> str:
    """The relay's token for the same room: the agent participant, which also sends the
    page its live events on the data channel."""
    grants = api.VideoGrants(
        room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True
    )
    return (
        api.AccessToken(config.api_key, config.api_secret)
        .with_identity(AGENT_IDENTITY)
        .with_kind("agent")
        .with_grants(grants)
        .with_ttl(ROOM_TOKEN_TTL)
        .to_jwt()
    )


async def open_room(
    config: LiveKitConfig, call_id: str, http: aiohttp.ClientSession
) -> LiveKitRoom:
    """Create the call's room and its two tokens (raises :class:`LiveKitError`)."""
    name = room_name(call_id)
    # failover=False: a self-hosted server has no other regions to try.
    client = api.LiveKitAPI(
        config.url, config.api_key, config.api_secret, session=http, failover=False
    )
    request = api.CreateRoomRequest(
        name=name,
        empty_timeout=EMPTY_ROOM_SECONDS,
        departure_timeout=DEPARTURE_SECONDS,
        max_participants=2,
    )
    try:
        room = await client.room.create_room(request)
    except api.TwirpError as exc:
        raise LiveKitError(f"LiveKit refused the room: {exc.message}", exc.status) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise LiveKitError(f"LiveKit did not answer: {exc!r}") from exc
    return LiveKitRoom(
        url=config.url,
        room=name,
        sid=room.sid,
        caller_token=caller_token(config, name, f"caller-{call_id}"),
        agent_token=agent_token(config, name),
    )
