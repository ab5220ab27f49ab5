"""Who a conversation is between and how its agent answers: frozen when it starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relay.agent_config import AgentConfig


@dataclass(frozen=True, slots=True)
class CallSetup:
    """Everything a brain and the voice engine need to run one call, frozen when the call
    was created."""

    call_id: str
    project_id: str
    agent_id: str | None
    number_id: str | None
    direction: str  # inbound | outbound
    channel: str  # voice
    from_number: str | None
    to_number: str | None
    voice_mode: str  # webhook | hosted
    webhook_url: str | None
    webhook_secrets: tuple[str, ...]
    webhook_timeout_ms: int
    agent: AgentConfig = field(default_factory=AgentConfig)
    metadata: dict[str, Any] = field(default_factory=dict)
