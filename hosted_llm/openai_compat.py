"""Any OpenAI-compatible ``/v1/chat/completions`` endpoint, streamed: OpenAI, Groq, vLLM,
Ollama, a llama.cpp server. Uses the ``openai`` package with ``base_url``.

The client never retries by itself: a live call cannot wait for a retry with backoff, and the
post-call worker has its own schedule. ``timeout_s`` bounds connecting plus the first chunk,
and then every gap between chunks (a stalled stream is as bad as a silent one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import openai

from hosted_llm.errors import (
    LLMConnectionError,
    LLMError,
    LLMResponseError,
    LLMStatusError,
    LLMTimeout,
)
from hosted_llm.types import Delta, Finish, Message, Priority, TextDelta, Tool, ToolCallDelta

NO_KEY = "not-needed"  # local servers take any key; the client insists on one


class OpenAIBackend:
    """A :class:`hosted_llm.ChatBackend` over the OpenAI chat completions wire format."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str = "",
        model: str = "",
        timeout_s: float = 15.0,
    ) -> None:
        self.base_url = base_url
        self.default_model = model
        self.timeout_s = timeout_s
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or NO_KEY, max_retries=0, timeout=None
        )

    @property
    def name(self) -> str:
        return f"openai:{self.default_model or '?'}"

    async def warm(self, messages: list[Message], *, tools: list[Tool] | None = None) -> None:
        """Nothing to do: remote servers cache prefixes on their own."""

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(
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
        chosen = model or self.default_model
        if not chosen:
            raise LLMResponseError(
                "no model: set the agent's 'model' or RELAY_LLM_MODEL for this endpoint"
            )
        kwargs: dict[str, Any] = {
            "model": chosen,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            kwargs["tools"] = tools
        if temperature is not None:
            kwargs["temperature"] = temperature
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "result", "schema": json_schema},
            }
        stream = await self._open(kwargs)
        try:
            async for delta in self._read(stream):
                yield delta
        finally:
            await stream.close()

    async def _open(self, kwargs: dict[str, Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._client.chat.completions.create(**kwargs)
        except TimeoutError as exc:
            raise LLMTimeout(f"no answer from {self.base_url} within {self.timeout_s:g} s") from exc
        except openai.APIError as exc:
            raise _translate(exc, self.base_url) from exc

    async def _read(self, stream: Any) -> AsyncIterator[Delta]:
        calls: dict[int, dict[str, str]] = {}
        finish = "stop"
        usage: Any = None
        chunks = stream.__aiter__()
        number = 0
        while True:
            try:
                async with asyncio.timeout(self.timeout_s):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                what = "first chunk" if number == 0 else f"chunk {number + 1}"
                raise LLMTimeout(f"no {what} within {self.timeout_s:g} s") from exc
            except openai.APIError as exc:
                raise _translate(exc, self.base_url) from exc
            except LLMError:
                raise
            except Exception as exc:  # a body that is not the SSE wire format
                raise LLMResponseError(f"unreadable stream: {exc!r}"[:300]) from exc
            number += 1
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
            for choice in chunk.choices or ():
                delta = choice.delta
                if delta is not None and delta.content:
                    yield TextDelta(delta.content)
                for call in (delta.tool_calls if delta is not None else None) or ():
                    entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    if call.id:
                        entry["id"] = call.id
                    if call.function is not None:
                        entry["name"] += call.function.name or ""
                        entry["arguments"] += call.function.arguments or ""
                if choice.finish_reason:
                    finish = choice.finish_reason
        for index in sorted(calls):
            entry = calls[index]
            if not entry["name"]:
                raise LLMResponseError(f"tool call {index} has no function name")
            yield ToolCallDelta(entry["id"] or f"call_{index}", entry["name"], entry["arguments"])
        cached = None
        details = getattr(usage, "prompt_tokens_details", None)
        if details is not None:
            cached = getattr(details, "cached_tokens", None)
        yield Finish(
            reason="tool_calls" if calls else finish,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cached_tokens=cached,
        )


def _translate(exc: openai.APIError, where: str) -> LLMError:
    if isinstance(exc, openai.APITimeoutError):
        return LLMTimeout(f"{where} timed out")
    if isinstance(exc, openai.APIConnectionError):
        return LLMConnectionError(f"cannot reach {where}: {exc.__cause__ or exc}"[:300])
    if isinstance(exc, openai.APIStatusError):
        return LLMStatusError(
            f"{where} answered HTTP {exc.status_code}: {exc.message}"[:300],
            status=exc.status_code,
        )
    return LLMResponseError(f"{where}: {exc}"[:300])
