"""``relay demo``: the relay with a demo project, key, agent and number, ready to call."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web
from sqlalchemy import select

from relay.api.agents import new_webhook_secret
from relay.auth import create_key
from relay.config import Settings
from relay.ids import new_id
from relay.logs import configure as configure_logs
from relay.store.db import Database
from relay.store.models import Agent, Number, utcnow

DEMO_PROJECT = "demo"
DEMO_AGENT = "Demo agent"


async def seed(settings: Settings, webhook_url: str) -> tuple[str, Agent, Number]:
    """Idempotent: reuses the demo agent and number; makes a fresh key every run."""
    from relay.carriers import ProvisionRequest
    from relay.carriers.sim import SimCarrier

    db = Database(settings.database_url)
    try:
        await db.migrate()
        async with db.session() as session:
            key, row = await create_key(session, DEMO_PROJECT, name="demo")
            agent = (
                await session.execute(
                    select(Agent).where(
                        Agent.project_id == row.project_id,
                        Agent.name == DEMO_AGENT,
                        Agent.deleted_at.is_(None),
                    )
                )
            ).scalar_one_or_none()
            if agent is None:
                agent = Agent(
                    id=new_id("agt"),
                    project_id=row.project_id,
                    name=DEMO_AGENT,
                    voice_mode="webhook",
                    webhook_url=webhook_url,
                    webhook_secret=new_webhook_secret(),
                    webhook_timeout_ms=30000,
                    config={"greeting": "Hi, this is the demo agent. How can I help?"},
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
                session.add(agent)
                await session.flush()
            number = (
                (
                    await session.execute(
                        select(Number).where(
                            Number.agent_id == agent.id, Number.released_at.is_(None)
                        )
                    )
                )
                .scalars()
                .first()
            )
            if number is None:
                taken = frozenset(
                    r[0]
                    for r in await session.execute(
                        select(Number.phone_number).where(Number.released_at.is_(None))
                    )
                )
                got = await SimCarrier().provision(ProvisionRequest("US", None, taken))
                number = Number(
                    id=new_id("num"),
                    project_id=row.project_id,
                    phone_number=got.phone_number,
                    country="US",
                    provider="sim",
                    source="provisioned",
                    provider_sid=got.provider_sid,
                    agent_id=agent.id,
                    capabilities=list(got.capabilities),
                    created_at=utcnow(),
                )
                session.add(number)
        return key, agent, number
    finally:
        await db.close()


def banner(settings: Settings, key: str, agent: Agent, number: Number) -> str:
    base = settings.effective_public_url()
    return f"""
Conversation relay demo is running at {base}
  project  {DEMO_PROJECT}
  API key  {key}        (secret: shown once)
  agent    {agent.id}   "{agent.name}" -> {agent.webhook_url}
  number   {number.phone_number}  ({number.id}, sim carrier)

Try it:
  export RELAY_KEY={key}
  curl -s {base}/v1/agents -H "Authorization: Bearer $RELAY_KEY"
  curl -s {base}/v1/numbers -H "Authorization: Bearer $RELAY_KEY"
  curl -s -X PATCH {base}/v1/agents/{agent.id} -H "Authorization: Bearer $RELAY_KEY" \\
       -H 'Content-Type: application/json' -d '{{"greeting": "Hello from the relay"}}'
API docs: {base}/docs    Stop with Ctrl-C.
"""


def run_demo(settings: Settings) -> int:
    settings = settings.model_copy(update={"allow_private_webhooks": True})
    configure_logs(settings.log_level, json=settings.log_json)
    from relay.app import create_app

    webhook_url = f"{settings.effective_public_url()}/examples/echo-webhook"
    key, agent, number = asyncio.run(seed(settings, webhook_url))
    print(banner(settings, key, agent, number), file=sys.stdout, flush=True)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        print=None,
        access_log=None,
    )
    return 0
