"""What the Telnyx tests share: numbers, and the API calls that set an account up."""

from __future__ import annotations

from relay.handset.fake_telnyx import FakeTelnyx
from relay.secretbox import new_key

PUBLIC_URL = "https://relay.example.com"
NUMBER_A = "+13125550101"  # owned by account A at the fake Telnyx
NUMBER_B = "+13125550102"  # owned by account B
UNOWNED = "+13125550109"
CALLER = "+12025550142"
KEY = new_key()


async def add_account(client, headers, fake, account, status=201) -> dict:
    body = {"provider": "telnyx", "credentials": fake.credentials(account)}
    resp = await client.post("/v1/carrier-accounts", json=body, headers=headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def import_number(client, headers, phone, account_id, status=201, **extra) -> dict:
    body = {"provider": "telnyx", "phoneNumber": phone, "carrierAccountId": account_id, **extra}
    resp = await client.post("/v1/numbers/import", json=body, headers=headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def bound_number(client, headers, fake, account, phone, webhook="http://127.0.0.1:9/h"):
    """An agent (answering at ``webhook``), the account added, ``phone`` imported and bound."""
    body = {"name": "Ava", "webhookUrl": webhook}
    agent = await (await client.post("/v1/agents", json=body, headers=headers)).json()
    created = await add_account(client, headers, fake, account)
    number = await import_number(client, headers, phone, created["id"], agentId=agent["id"])
    return agent, created, number


def deliver_to_relay(fake: FakeTelnyx, client) -> None:
    """The fake reaches the relay's public URLs where the test server listens."""
    base = str(client.make_url("")).rstrip("/")
    fake.deliver_to = [
        (PUBLIC_URL, base),
        ("wss://relay.example.com", base.replace("http://", "ws://", 1)),
    ]
