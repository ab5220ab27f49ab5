"""Opening a call for a media transport: the Call row, its agent snapshot, its media token.

A call is created when the carrier asks what to do with it (Twilio's voice webhook, the sim
carrier's ``POST /carriers/sim/voice``) or when a developer asks for a raw websocket call.
It is stored ``queued -> connecting`` with the agent's settings frozen in ``agent_snapshot``
and a media token good for :data:`MEDIA_TOKEN_TTL_SECONDS` is issued for it. When the
carrier's media socket presents that token, :func:`begin` moves the call to ``in_progress``
(once: a second socket for the same call is refused) and builds the engine's
:class:`~relay.engine.ports.CallSetup`; an outbound call's socket arrives the same way, while
it rings. :func:`relay.calls.live.finish` records the end.

An agent's webhook secrets are not copied into the snapshot; :func:`begin` reads them from
the agent, so they never sit in the calls table. (A call opened with inline settings has no
agent: the Calls API keeps its secret in the snapshot, and :func:`begin` takes it there.)

    CallUnavailable                      no call can be opened; ``code`` is stable
    ├── code "unknown_number"            no active number with that value
    ├── code "unbound_number"            the number has no agent
    ├── code "unknown_agent"             no such agent in the project
    ├── code "duplicate_carrier_call"    a replayed carrier request for a call already started
    └── code "call_not_connecting"       the media socket came for a call that is not waiting
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from relay import tokens
from relay.agent_config import STORED_DEFAULTS, AgentConfig
from relay.calls.event_log import log_event
from relay.calls.lifecycle import open_call, transition
from relay.calls.recovery import hold_call, lock_call
from relay.carriers import Carrier
from relay.engine.ports import CallSetup
from relay.ids import new_id
from relay.logs import get_logger
from relay.state import AppState
from relay.store.db import Database
from relay.store.models import Agent, Call, Number, utcnow
from relay.urls import media_base_url
from relay_numbers.accounts import AccountCarriers
from relay_numbers.routing import number_for_inbound, project_number

log = get_logger("relay.calls.inbound")

MEDIA_TOKEN_TTL_SECONDS = 60
MEDIA_TOKEN_PURPOSE = "media"
# A web call's token: the page presents it once, with its WHIP offer (relay.api.webrtc).
WEB_TOKEN_PURPOSE = "webrtc"
WEB_TOKEN_TTL_SECONDS = 300
SAMPLE_RATES = (8000, 16000, 24000, 48000)
CONNECTION_TYPES = ("twilio", "sim", "websocket", "telnyx", "plivo")
# The key in ``Call.agent_snapshot`` holding how the media travels (not an agent setting).
TRANSPORT_KEY = "transport"


class CallUnavailable(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class OpenedCall:
    """A call waiting for its media socket."""

    call_id: str
    project_id: str
    agent_id: str
    media_token: str


@dataclass(frozen=True, slots=True)
class WebsocketCall:
    """A raw websocket call: connect to ``join_url`` within the token's lifetime."""

    call_id: str
    join_url: str
    sample_rate: int


def agent_snapshot(agent: Agent) -> dict[str, Any]:
    """The agent's settings as a call freezes them: defaults applied, snake_case keys."""
    return {
        **STORED_DEFAULTS,
        **agent.config,
        "name": agent.name,
        "voice_mode": agent.voice_mode,
        "webhook_url": agent.webhook_url,
        "webhook_timeout_ms": agent.webhook_timeout_ms,
    }


async def _live_agent(session: AsyncSession, agent_id: str, project_id: str) -> Agent | None:
    agent: Agent | None = (
        await session.execute(
            select(Agent).where(
                Agent.id == agent_id,
                Agent.project_id == project_id,
                Agent.deleted_at.is_(None),
            )
        )
    ).scalar_one_or_none()
    return agent


async def _same_carrier_call(
    session: AsyncSession, connection_type: str, carrier_call_id: str
) -> Call | None:
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        key = f"{connection_type}:{carrier_call_id}"
        await session.execute(select(func.pg_advisory_xact_lock(func.hashtext(key))))
    found: Call | None = (
        await session.execute(
            select(Call).where(
                Call.connection_type == connection_type, Call.carrier_call_id == carrier_call_id
            )
        )
    ).scalar_one_or_none()
    return found


def _reopened(state: AppState, call: Call) -> OpenedCall:
    """The call a replayed carrier request names: its media token again while it still waits
    for media, refused once it has started or ended."""
    if call.status not in ("queued", "connecting"):
        log.warning("carrier_call_replayed", call_id=call.id, status=call.status)
        raise CallUnavailable(
            "duplicate_carrier_call", f"The carrier's call is already {call.status}."
        )
    log.info("carrier_call_retried", call_id=call.id)
    token = tokens.issue(state.signing_key, call.id, MEDIA_TOKEN_PURPOSE, MEDIA_TOKEN_TTL_SECONDS)
    assert call.agent_id is not None
    return OpenedCall(call.id, call.project_id, call.agent_id, token)


async def _open_for_media(
    state: AppState,
    *,
    project_id: str,
    agent_id: str,
    connection_type: str,
    number: Number | None = None,
    from_number: str | None = None,
    to_number: str | None = None,
    direction: str = "inbound",
    carrier_call_id: str | None = None,
    sample_rate: int = 8000,
    metadata: dict[str, Any] | None = None,
) -> OpenedCall:
    """Create the Call row (``queued -> connecting``, one transaction) and its media token."""
    if connection_type not in CONNECTION_TYPES:
        raise ValueError(f"connection_type must be one of {CONNECTION_TYPES}")
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(f"sample_rate must be one of {SAMPLE_RATES}")
    # One carrier call opens one call: a webhook replayed (or retried) with the same carrier
    # call id answers for the call already opened. Writers queue (SQLite) or lock the id
    # (PostgreSQL), so two copies of one request cannot both miss the first.
    opening = state.db.writing() if carrier_call_id else state.db.session()
    async with opening as session:
        if carrier_call_id:
            same = await _same_carrier_call(session, connection_type, carrier_call_id)
            if same is not None:
                return _reopened(state, same)
        agent = await _live_agent(session, agent_id, project_id)
        if agent is None:
            raise CallUnavailable("unknown_agent", f"No agent {agent_id!r} in this project.")
        snapshot = agent_snapshot(agent)
        snapshot[TRANSPORT_KEY] = {"sample_rate": sample_rate}
        call = Call(
            id=new_id("call"),
            project_id=project_id,
            agent_id=agent.id,
            number_id=number.id if number is not None else None,
            direction=direction,
            connection_type=connection_type,
            from_number=from_number,
            to_number=to_number,
            status="queued",
            voice_mode=agent.voice_mode,
            agent_snapshot=snapshot,
            call_metadata=dict(metadata or {}),
            carrier_call_id=carrier_call_id,
            created_at=utcnow(),
        )
        await open_call(session, call, connecting=True)
    token = tokens.issue(state.signing_key, call.id, MEDIA_TOKEN_PURPOSE, MEDIA_TOKEN_TTL_SECONDS)
    log.info(
        "call_opened",
        call_id=call.id,
        agent_id=agent.id,
        connection_type=connection_type,
        direction=direction,
    )
    return OpenedCall(call.id, project_id, agent.id, token)


async def open_inbound_call(
    state: AppState,
    *,
    to_number: str,
    from_number: str | None,
    connection_type: str,
    carrier_call_id: str | None = None,
    carrier_keys: tuple[str, ...] = (),
    project_id: str | None = None,
) -> OpenedCall:
    """A call to ``to_number`` (E.164), answered by the agent bound to it.

    ``project_id``, when given, must own the number (an API key's project); otherwise the
    number is looked up under ``carrier_keys``, the carrier accounts the carrier's webhook
    names (:mod:`relay_numbers.keys`)."""
    if project_id is not None:
        number = await project_number(state.db, project_id, to_number)
    else:
        number = await number_for_inbound(state.db, to_number, carrier_keys)
    if number is None:
        raise CallUnavailable("unknown_number", f"No active number {to_number}.")
    if number.agent_id is None:
        raise CallUnavailable("unbound_number", f"The number {to_number} has no agent.")
    return await _open_for_media(
        state,
        project_id=number.project_id,
        agent_id=number.agent_id,
        connection_type=connection_type,
        number=number,
        from_number=from_number,
        to_number=to_number,
        carrier_call_id=carrier_call_id,
    )


async def start_websocket_call(
    state: AppState,
    *,
    project_id: str,
    agent_id: str | None = None,
    number: str | None = None,
    sample_rate: int = 16000,
    from_number: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> WebsocketCall:
    """A bring-your-own-telephony call on the raw websocket transport.

    Give ``agent_id``, or ``number`` (an E.164 number of the project; its agent answers).
    The returned ``join_url`` carries a media token valid for 60 seconds."""
    if (agent_id is None) == (number is None):
        raise ValueError("give exactly one of agent_id and number")
    if number is not None:
        found = await project_number(state.db, project_id, number)
        if found is None:
            raise CallUnavailable("unknown_number", f"No active number {number}.")
        if found.agent_id is None:
            raise CallUnavailable("unbound_number", f"The number {number} has no agent.")
        opened = await _open_for_media(
            state,
            project_id=project_id,
            agent_id=found.agent_id,
            connection_type="websocket",
            number=found,
            from_number=from_number,
            to_number=number,
            sample_rate=sample_rate,
            metadata=metadata,
        )
    else:
        assert agent_id is not None
        opened = await _open_for_media(
            state,
            project_id=project_id,
            agent_id=agent_id,
            connection_type="websocket",
            from_number=from_number,
            sample_rate=sample_rate,
            metadata=metadata,
        )
    base = media_base_url(state.settings.effective_public_url())
    url = f"{base}/media/websocket?token={opened.media_token}"
    return WebsocketCall(opened.call_id, url, sample_rate)


def sample_rate_of(call: Call) -> int:
    transport = call.agent_snapshot.get(TRANSPORT_KEY) or {}
    rate = transport.get("sample_rate", 8000)
    return int(rate) if rate in SAMPLE_RATES else 8000


# Statuses a call may be in when its media socket opens: an inbound call waits in
# ``connecting``; an outbound call's socket opens when the far end answers (``ringing``).
AWAITING_MEDIA = ("connecting", "ringing")


async def begin(
    db: Database,
    call_id: str,
    *,
    node_id: str,
    connection_types: tuple[str, ...] = CONNECTION_TYPES,
    carrier_call_id: str | None = None,
) -> CallSetup:
    """The media socket is up: the call goes ``in_progress``, held by ``node_id`` (so
    recovery closes it if this node dies), and the engine gets its :class:`CallSetup`.

    Raises :class:`CallUnavailable` (``call_not_connecting``) if the call is not waiting for
    its media: it never existed, already started (a second socket), or already ended."""
    async with db.session() as session:
        call = await lock_call(session, call_id)
        if (
            call is None
            or call.status not in AWAITING_MEDIA
            or call.connection_type not in connection_types
        ):
            raise CallUnavailable(
                "call_not_connecting",
                f"Call {call_id} is not waiting for media"
                + (f" (it is {call.status})." if call is not None else "."),
            )
        if carrier_call_id and not call.carrier_call_id:
            call.carrier_call_id = carrier_call_id
        await hold_call(session, call_id, node_id)  # an outbound call's dialler may hold it
        await transition(session, call, "in_progress")
        agent = await session.get(Agent, call.agent_id) if call.agent_id is not None else None
        return _setup(call, agent)


def _setup(call: Call, agent: Agent | None) -> CallSetup:
    config = AgentConfig.from_stored(call.agent_snapshot)
    # A call opened with inline settings has no agent; its secret lives in the snapshot.
    inline_secret = call.agent_snapshot.get("webhook_secret")
    secrets = agent.signing_secrets() if agent is not None else ()
    secrets = secrets or ((inline_secret,) if inline_secret else ())
    return CallSetup(
        call_id=call.id,
        project_id=call.project_id,
        agent_id=call.agent_id,
        number_id=call.number_id,
        direction=call.direction,
        channel="voice",
        from_number=call.from_number,
        to_number=call.to_number,
        voice_mode=call.voice_mode,
        webhook_url=config.webhook_url,
        webhook_secrets=secrets,
        webhook_timeout_ms=config.webhook_timeout_ms,
        agent=config,
        metadata=dict(call.call_metadata or {}),
    )


async def load_call(db: Database, call_id: str) -> Call | None:
    async with db.session() as session:
        call: Call | None = await session.get(Call, call_id)
    return call


async def carrier_of_call(
    db: Database, carriers: AccountCarriers, call_id: str, provider: str
) -> Carrier | None:
    """The ``provider`` carrier, on its account, of the number of ours a call came in on or
    went out from; None for a call of no such number (BYOT, web, sim) or an unreadable
    account. Never raises: a call without it only loses its carrier-side commands."""
    try:
        async with db.session() as session:
            call = await session.get(Call, call_id)
            number = await session.get(Number, call.number_id) if call and call.number_id else None
        if number is None or number.provider != provider:
            return None
        return await carriers.for_key(provider, number.carrier_key, number.carrier_account_id)
    except Exception as exc:
        log.warning("call_carrier_unavailable", call_id=call_id, error=repr(exc))
        return None


async def telephony_event(
    db: Database,
    call_id: str,
    message: str,
    *,
    level: str = "warning",
    data: dict[str, Any] | None = None,
) -> None:
    """One line in the call's event log from a transport or carrier."""
    async with db.session() as session:
        await log_event(session, call_id, "telephony", message, level=level, data=data)
