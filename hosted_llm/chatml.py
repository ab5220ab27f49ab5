"""Qwen2.5's chat template (ChatML with Hermes-style ``<tool_call>`` tags), rendered here so
the prompt of turn N is, byte for byte, a prefix of the prompt of turn N+1: that is what
lets the embedded model reuse its cached state instead of reading the call again.

:class:`ToolCallParser` turns the streamed text back into text deltas and tool calls.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from hosted_llm.types import Message, TextDelta, Tool, ToolCallDelta

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
STOP = [IM_END, "<|endoftext|>"]
DEFAULT_SYSTEM = "You are a helpful assistant."
OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
TOOLS_INTRO = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def _tojson(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw or "{}")
        except json.JSONDecodeError:
            return raw
    return raw


def render(messages: list[Message], tools: list[Tool] | None, *, generation: bool) -> str:
    """The prompt for ``messages``; with ``generation`` it ends where the reply starts."""
    system = DEFAULT_SYSTEM
    rest = messages
    if messages and messages[0].get("role") == "system":
        system = str(messages[0].get("content") or "")
        rest = messages[1:]
    out = [IM_START, "system\n", system]
    if tools:
        out.append(TOOLS_INTRO)
        for tool in tools:
            out.append("\n" + _tojson(tool))
        out.append(TOOLS_OUTRO)
    out.append(IM_END + "\n")
    for index, message in enumerate(rest):
        role = message.get("role")
        content = str(message.get("content") or "")
        if role == "tool":
            if index == 0 or rest[index - 1].get("role") != "tool":
                out.append(IM_START + "user")
            out.append("\n<tool_response>\n" + content + "\n</tool_response>")
            if index == len(rest) - 1 or rest[index + 1].get("role") != "tool":
                out.append(IM_END + "\n")
        elif role == "assistant" and message.get("tool_calls"):
            out.append(IM_START + "assistant")
            if content:
                out.append("\n" + content)
            for call in message["tool_calls"]:
                fn = call.get("function", call)
                out.append('\n<tool_call>\n{"name": "' + str(fn["name"]) + '", "arguments": ')
                out.append(_tojson(_arguments(fn.get("arguments"))) + "}\n</tool_call>")
            out.append(IM_END + "\n")
        else:
            out.append(f"{IM_START}{role}\n{content}{IM_END}\n")
    if generation:
        out.append(IM_START + "assistant\n")
    return "".join(out)


def new_call_id() -> str:
    return "call_" + secrets.token_hex(8)


class ToolCallParser:
    """Feed the model's text as it streams; get text to speak and complete tool calls.

    Text that might be the start of ``<tool_call>`` is held back until it is clearly not.
    A reply that opens with ``{`` (or a code fence) is held to the end: small models
    sometimes write a bare ``{"name": ..., "arguments": ...}`` call without the tags."""

    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False
        self._started = False
        self._bare = False

    def feed(self, piece: str) -> list[TextDelta | ToolCallDelta]:
        self._buffer += piece
        out: list[TextDelta | ToolCallDelta] = []
        if not self._started:
            head = self._buffer.lstrip()
            if not head:
                return out
            self._started = True
            self._bare = head.startswith("{") or head.startswith("`")
        if self._bare:
            return out
        while True:
            if self._in_call:
                end = self._buffer.find(CLOSE_TAG)
                if end < 0:
                    return out
                out.append(_parse_call(self._buffer[:end]))
                self._buffer = self._buffer[end + len(CLOSE_TAG) :]
                self._in_call = False
                continue
            start = self._buffer.find(OPEN_TAG)
            if start >= 0:
                if self._buffer[:start].strip():
                    out.append(TextDelta(self._buffer[:start]))
                self._buffer = self._buffer[start + len(OPEN_TAG) :]
                self._in_call = True
                continue
            keep = _partial_tag(self._buffer)
            ready = self._buffer[: len(self._buffer) - keep]
            if ready:
                out.append(TextDelta(ready))
            self._buffer = self._buffer[len(ready) :]
            return out

    def close(self) -> list[TextDelta | ToolCallDelta]:
        """The end of the stream: a call the model did not close is parsed as it stands."""
        rest, self._buffer = self._buffer, ""
        if self._bare:
            self._bare = False
            calls = _bare_calls(rest)
            if calls:
                return list(calls)
            self._started = True
            return self.feed(rest) + self.close()
        if self._in_call:
            self._in_call = False
            return [_parse_call(rest)] if rest.strip() else []
        return [TextDelta(rest)] if rest.strip() else []


def _bare_calls(text: str) -> list[ToolCallDelta]:
    """``{"name": ..., "arguments": ...}`` objects (one per line, or fenced) as calls."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[-1].rsplit("```", 1)[0]
    calls = []
    for line in body.strip().splitlines() or [""]:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            try:
                obj = json.loads(body)
            except json.JSONDecodeError:
                return []
            return [_parse_call(body)] if _looks_like_call(obj) else []
        if not _looks_like_call(obj):
            return []
        calls.append(_parse_call(line))
    return calls


def _looks_like_call(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("name"), str) and "arguments" in obj


def _partial_tag(text: str) -> int:
    for size in range(min(len(OPEN_TAG) - 1, len(text)), 0, -1):
        if OPEN_TAG.startswith(text[-size:]):
            return size
    return 0


def _parse_call(body: str) -> ToolCallDelta:
    text = body.strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return ToolCallDelta(new_call_id(), "", text)
    if not isinstance(obj, dict):
        return ToolCallDelta(new_call_id(), "", text)
    arguments = obj.get("arguments", {})
    args_text = arguments if isinstance(arguments, str) else _tojson(arguments)
    return ToolCallDelta(new_call_id(), str(obj.get("name") or ""), args_text)
