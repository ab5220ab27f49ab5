"""Opening calls for media transports: the frozen agent, the secrets, once-only media, expiry."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from relay import tokens
from relay.calls import inbound
from relay.calls.live import finish
from relay.calls.recovery import expire_unconnected
from relay.engine.ports import CallEnd
from relay.state import APP_STATE
from relay.store.models import Agent, Call, CallLease
from relay_numbers import TWILIO_DEPLOYMENT_KEY
from tests.transports.support import agent_with_number, phone_settings

NODE = "node-a"


@pytest.fixture
async def phone(database, app_client):
    return await app_client(phone_settings())


async def opened_call(phone, auth, database, **agent_fields):
    agent, number = await agent_with_number(phone, auth, **agent_fields)
    opened = await inbound.open_inbound_call(
        phone.app[APP_STATE],
        to_number=number,
        from_number="+61412345678",
        connection_type="sim",
        carrier_keys=(TWILIO_DEPLOYMENT_KEY,),
    )
    return agent, opened


async def test_a_call_keeps_the_agent_settings_it_was_opened_with(phone, auth, database):
    agent, opened = await opened_call(phone, auth, database, greeting="Hello from before.")
    resp = await phone.patch(
        f"/v1/agents/{agent['id']}",
        json={"greeting": "Hello from after.", "webhookUrl": "http://127.0.0.1:9/new"},
        headers=auth,
    )
    assert resp.status == 200
    setup = await inbound.begin(database, opened.call_id, node_id=NODE)
    assert setup.agent["greeting"] == "Hello from before."
    assert setup.webhook_url == "http://127.0.0.1:9/hook"
    assert setup.agent["max_webhook_failures"] == 3  # defaults are frozen too
    assert "transport" not in setup.agent and "webhook_secret" not in setup.agent
    assert (setup.direction, setup.from_number, setup.agent_id) == (
        "inbound",
        "+61412345678",
        agent["id"],
    )


@pytest.mark.parametrize(("grace", "both"), [(3600, True), (0, False)])
async def test_the_previous_secret_signs_too_while_its_grace_runs(
    phone, auth, database, grace, both
):
    agent, opened = await opened_call(phone, auth, database)
    resp = await phone.post(
        f"/v1/agents/{agent['id']}/rotate-webhook-secret",
        json={"graceSeconds": grace},
        headers=auth,
    )
    new = (await resp.json())["webhookSecret"]
    setup = await inbound.begin(database, opened.call_id, node_id=NODE)
    expected = (new, agent["webhookSecret"]) if both else (new,)
    assert setup.webhook_secrets == expected


async def test_media_starts_once_and_the_node_holds_the_call(phone, auth, database):
    _, opened = await opened_call(phone, auth, database)
    await inbound.begin(database, opened.call_id, node_id=NODE, carrier_call_id="CAx")
    with pytest.raises(inbound.CallUnavailable) as info:
        await inbound.begin(database, opened.call_id, node_id=NODE)
    assert info.value.code == "call_not_connecting"
    async with database.session() as session:
        call = await session.get(Call, opened.call_id)
        lease = await session.get(CallLease, opened.call_id)
    assert (call.status, call.carrier_call_id) == ("in_progress", "CAx")
    assert lease is not None and lease.node_id == NODE

    assert await finish(database, opened.call_id, CallEnd("failed", "webhook_error"))
    assert not await finish(database, opened.call_id, CallEnd("completed"))
    async with database.session() as session:
        call = await session.get(Call, opened.call_id)
        lease = await session.get(CallLease, opened.call_id)
    assert (call.status, call.failure_reason, lease) == ("failed", "webhook_error", None)


async def test_a_transport_only_opens_calls_of_its_kind(phone, auth, database):
    _, opened = await opened_call(phone, auth, database)  # a sim call
    with pytest.raises(inbound.CallUnavailable):
        await inbound.begin(database, opened.call_id, node_id=NODE, connection_types=("websocket",))


async def test_a_call_whose_media_never_came_expires_as_network_timeout(phone, auth, database):
    _, waiting = await opened_call(phone, auth, database)
    _, started = await opened_call(phone, auth, database)
    await inbound.begin(database, started.call_id, node_id=NODE)
    assert await expire_unconnected(database, waiting.call_id)
    assert not await expire_unconnected(database, started.call_id)
    async with database.session() as session:
        rows = {c.id: c for c in (await session.execute(select(Call))).scalars()}
    assert (rows[waiting.call_id].status, rows[waiting.call_id].failure_reason) == (
        "failed",
        "network_timeout",
    )
    assert rows[started.call_id].status == "in_progress"


async def test_a_deleted_agents_number_is_unbound(phone, auth, database):
    agent, number = await agent_with_number(phone, auth)
    await phone.delete(f"/v1/agents/{agent['id']}", headers=auth)
    with pytest.raises(inbound.CallUnavailable) as info:
        await inbound.open_inbound_call(
            phone.app[APP_STATE],
            to_number=number,
            from_number=None,
            connection_type="twilio",
            carrier_keys=(TWILIO_DEPLOYMENT_KEY,),
        )
    assert info.value.code == "unbound_number"


async def test_an_inline_call_from_the_calls_api_signs_with_its_own_secret(phone, auth, database):
    resp = await phone.post(
        "/v1/calls/inline",
        json={
            "webhookUrl": "http://127.0.0.1:9/inline",
            "greeting": "Inline here.",
            "connectionType": "websocket",
            "sampleRate": 24000,
        },
        headers=auth,
    )
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    token = parse_qs(urlsplit(created["joinUrl"]).query)["token"][0]
    call_id = tokens.verify(phone.app[APP_STATE].signing_key, token, "media")
    async with database.session() as session:
        call = await session.get(Call, call_id)
        assert inbound.sample_rate_of(call) == 24000
        assert (await session.execute(select(Agent))).first() is None
    setup = await inbound.begin(database, call_id, node_id=NODE)
    assert setup.agent_id is None
    assert setup.webhook_secrets == (created["webhookSecret"],)
    assert setup.webhook_url == "http://127.0.0.1:9/inline"
    assert setup.agent["greeting"] == "Inline here."
