"""An SMS agent's webhook goes through the checked client: a name that resolves to loopback
is refused at connect time, the sender gets the fallback and the text's log says why."""

from __future__ import annotations

import pytest

from relay.config import Settings
from sms.worker import DEFAULT_FALLBACK
from tests.sms.conftest import make_agent, sim_text


@pytest.fixture(params=[False, True], ids=["checked", "private-allowed"])
def settings(request, settings):
    return Settings(
        **{
            **settings.model_dump(),
            "allow_private_webhooks": request.param,
            "webhook_hosts": {"hooks.test": "127.0.0.1"},
        }
    )


async def test_a_webhook_whose_name_resolves_to_loopback_is_refused(client, auth, hook, settings):
    url = hook.url.replace("127.0.0.1", "hooks.test")
    agent = await make_agent(client, auth, hook, webhookUrl=url)
    got = await sim_text(client, auth, agent.number, "hi")
    if settings.allow_private_webhooks:
        assert [r["text"] for r in got["replies"]] == ["You said: hi"]
        return
    assert [r["text"] for r in got["replies"]] == [DEFAULT_FALLBACK]
    assert hook.received == []
    detail = await (await client.get(f"/v1/messages/{got['messageId']}", headers=auth)).json()
    assert detail["events"][0]["data"] == {
        "reason": "connection_failed",
        "detail": "hooks.test is not a public address",
    }
