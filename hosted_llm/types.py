"""The one streaming chat seam every backend implements, and what flows through it.

Messages and tools use the OpenAI chat wire shapes (plain dicts), which every
OpenAI-compatible server accepts and the embedded model's template renders:

    {"role": "system" | "user" | "assistant" | "tool", "content": "...",
     "tool_calls": [{"id": "...", "type": "function",
                     "function": {"name": "...", "arguments": "<json text>"}}],   # assistant
     "tool_call_id": "..."}                                                       # tool
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

Message = dict[str, Any]
Tool = dict[str, Any]  # {"type": "function", "function": {"name", "description", "parameters"}}


class Priority(IntEnum):
    """Who waits for whom on a shared model: a live call's turn never waits for a warm-up,
    and neither waits for a post-call job."""

    LIVE = 0
    WARM = 1
    BACKGROUND = 2


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Words of the reply, in order, as soon as the backend has them."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """One tool call, yielded once its arguments are complete. ``arguments`` is JSON text
    as the model wrote it (it may not parse: the caller decides what to do then)."""

    id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as an object; ``ValueError`` if they are not a JSON object."""
        value = json.loads(self.arguments or "{}")
        if not isinstance(value, dict):
            raise ValueError("tool arguments must be a JSON object")
        return value

    def as_message_call(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class Finish:
    """The last delta of a stream: why it stopped and what it cost."""

    reason: str  # stop | length | tool_calls | cancelled
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


Delta = TextDelta | ToolCallDelta | Finish


class ChatBackend(Protocol):
    """A chat model that streams. Implementations: :class:`hosted_llm.OpenAIBackend`,
    :class:`hosted_llm.LocalBackend`."""

    @property
    def name(self) -> str:
        """``openai:<model>`` or ``local:<model>``, for logs and metrics."""

    def stream(
        self,
        messages: list[Message],
        *,
        tools: list[Tool] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        json_schema: dict[str, Any] | None = None,
        model: str | None = None,
        priority: Priority = Priority.LIVE,
    ) -> AsyncIterator[Delta]:
        """Stream the reply to ``messages``. ``json_schema`` constrains the output to JSON
        matching it where the backend can (grammar, ``response_format``). Raises
        :class:`hosted_llm.errors.LLMError`. Closing the iterator stops the generation."""

    async def warm(self, messages: list[Message], *, tools: list[Tool] | None = None) -> None:
        """Make the next request that starts with ``messages`` fast (prefix cache)."""

    async def aclose(self) -> None: ...
