"""What the Plivo tests share: a fake Plivo (REST API and its side of calls and texts), a
relay pointed at it, and a project's Plivo account with a number bound to an agent."""

from __future__ import annotations

from relay.config import Settings
from relay.secretbox import new_key

PUBLIC_URL = "https://relay.example.com"
AUTH_A, TOKEN_A = "MA" + "A" * 18, "plivotokenofaccountaaaaaaaaaaaaaaaaaaa1"
AUTH_B, TOKEN_B = "MA" + "B" * 18, "plivotokenofaccountbbbbbbbbbbbbbbbbbbb2"
NUMBER_A = "+14155550111"  # rented by account A at the fake Plivo
NUMBER_B = "+14155550112"  # rented by account B
CALLER = "+12025550142"
KEY = new_key()


def plivo_settings(base_url: str, **overrides) -> Settings:
    values = {
        "allow_private_webhooks": True,
        "rate_limit_per_second": 1000,
        "rate_limit_burst": 1000,
        "public_url": PUBLIC_URL,
        "encryption_key": KEY,
        "plivo_api_base_url": base_url,
    }
    return Settings(**{**values, **overrides})


async def add_account(client, headers, auth_id=AUTH_A, token=TOKEN_A, status=201) -> dict:
    body = {"provider": "plivo", "credentials": {"authId": auth_id, "authToken": token}}
    resp = await client.post("/v1/carrier-accounts", json=body, headers=headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def import_number(client, headers, phone, account_id=None, status=201, **extra) -> dict:
    body = {"provider": "plivo", "phoneNumber": phone, **extra}
    if account_id:
        body["carrierAccountId"] = account_id
    resp = await client.post("/v1/numbers/import", json=body, headers=headers)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def plivo_agent(client, headers, webhook_url="http://127.0.0.1:9/hook", **agent) -> dict:
    """An agent bound to NUMBER_A, imported under the project's Plivo account A."""
    body = {"name": "Ava", "webhookUrl": webhook_url, **agent}
    resp = await client.post("/v1/agents", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    account = await add_account(client, headers)
    await import_number(client, headers, NUMBER_A, account["id"], agentId=created["id"])
    return created


def answer_url(auth_id: str = AUTH_A) -> str:
    return f"{PUBLIC_URL}/carriers/plivo/voice?authId={auth_id}"


def message_url(auth_id: str = AUTH_A) -> str:
    return f"{PUBLIC_URL}/carriers/plivo/sms?authId={auth_id}"


def origin(client) -> str:
    return str(client.make_url("")).rstrip("/")
