"""The ``agent.message`` event: the one request body every turn sends, voice and SMS alike."""

from __future__ import annotations

from typing import Any, Literal

from relay.timefmt import iso

# How many history entries a turn carries (the newest).
HISTORY_LIMIT = 20

Channel = Literal["voice", "sms"]


def agent_message(
    *,
    channel: Channel,
    agent_id: str | None,
    data: dict[str, Any],
    state: dict[str, Any] | None,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """The event a brain answers: ``data`` is the channel's own (callId and transcript, or
    messageId and text), ``state`` what the webhook last returned, ``history`` oldest first."""
    return {
        "event": "agent.message",
        "channel": channel,
        "timestamp": iso(),
        "agentId": agent_id,
        "data": data,
        "conversationState": state if state is not None else {},
        "recentHistory": history[-HISTORY_LIMIT:],
    }
