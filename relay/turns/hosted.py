"""Hosted voice mode: the built-in LLM (``hosted_llm``) answers each turn instead of a webhook.

:class:`HostedBrain` holds one call's conversation and plugs in where the webhook does: the
session hands it the same ``agent.message`` turn it would POST, and it yields the same
:class:`~relay.turns.protocol.Chunk` objects a webhook streams back. So everything the session
does with a reply (speak each sentence as it completes, the filler, the fallback line and the
failure limit, hangup and transfer after speaking, turn metrics) is the same in both modes.

The conversation is append-only, so the embedded model keeps each call's prefix cached:
the system prompt (and greeting) are read while the greeting plays (:meth:`HostedBrain.start`)
and each turn only reads what was said since. What the caller actually heard is the truth:
a reply cut short by barge-in is kept as heard, and lines the session spoke by itself
(fallback, reprompt) are added as the agent's.

Tools (the agent's ``tools``): the LLM calls them, the relay POSTs a signed ``tool.call``
event to the tool's URL and feeds the answer back (an error text if it failed or timed
out), and the transcript gets a ``tool`` segment. ``end_call`` and ``transfer_call`` are
built in: listed without a URL, they end or transfer the call once the reply is spoken. A
transfer goes only to one of the tool's ``destinations`` (:mod:`relay.transfer`); any other is
refused: the LLM is told so, the call's event log gets a ``telephony`` warning, and the call
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import jsonschema

from hosted_llm import (
    ChatBackend,
    LLMConfig,
    LLMError,
    Message,
    Priority,
    TextDelta,
    ToolCallDelta,
    render_template,
    shared_backend,
)
from relay.config import Settings
from relay.egress import answer_summary, describe
from relay.logs import get_logger
from relay.signing import signature_headers
from relay.timefmt import iso
from relay.transfer import TransferRefused, check_transfer
from relay.turns.protocol import BodyTooLarge, Chunk, TurnError, TurnRequest, read_body
from relay.turns.setup import CallSetup

log = get_logger("relay.turns.hosted")

BUILTINS = ("end_call", "transfer_call")
DEFAULT_TOOL_TIMEOUT_MS = 5000
MAX_TOOL_RESULT_CHARS = 8000
# A tool's whole answer, read to its end (UTF-8 takes at most 4 bytes a character).
MAX_TOOL_RESULT_BYTES = MAX_TOOL_RESULT_CHARS * 4
# Keep the prompt inside a small model's context: oldest turns go first, whole.
HISTORY_CHARS = 9000
USER_AGENT = "conversation-relay/0.1"

ToolRecorder = Callable[[str, float, float, dict[str, Any]], None]
# A line of the call's event log: (source, message, level, data), as the call's sink takes it.
EventRecorder = Callable[[str, str, str, dict[str, Any]], None]


def llm_config(settings: Settings) -> LLMConfig:
    """The process's ``hosted_llm`` configuration from ``RELAY_LLM_*``."""
    return LLMConfig(
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key,
        model=settings.llm_model,
        local_model=settings.llm_local_model,
        model_dir=settings.llm_model_dir,
        threads=settings.llm_threads,
        cache_mb=settings.llm_cache_mb,
        timeout_s=settings.llm_timeout_seconds,
    )


def hosted_backend(settings: Settings) -> ChatBackend:
    return shared_backend(llm_config(settings))


def template_scopes(setup: CallSetup) -> dict[str, dict[str, Any]]:
    """What ``{{variables.x}}``, ``{{user.x}}`` and ``{{call.x}}`` stand for in a call.

    ``user`` is the other party: ``user.phone`` is their number, and the call's
    ``metadata.user`` object (if any) adds its keys (``{{user.name}}``...)."""
    inbound = setup.direction == "inbound"
    user: dict[str, Any] = {"phone": setup.from_number if inbound else setup.to_number}
    meta_user = setup.metadata.get("user")
    if isinstance(meta_user, dict):
        user.update(meta_user)
    return {
        "variables": dict(setup.agent.variables),
        "user": user,
        "call": {
            "id": setup.call_id,
            "from": setup.from_number,
            "to": setup.to_number,
            "direction": setup.direction,
            "agentId": setup.agent_id,
        },
    }


def with_templates(setup: CallSetup) -> CallSetup:
    """The setup with its system prompt and greeting filled in."""
    scopes = template_scopes(setup)
    agent = setup.agent
    return replace(
        setup,
        agent=agent.with_prompts(
            render_template(agent.system_prompt, scopes), render_template(agent.greeting, scopes)
        ),
    )


# --------------------------------------------------------------------------------- tools


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    url: str | None = None
    timeout_ms: int = DEFAULT_TOOL_TIMEOUT_MS
    destinations: tuple[str, ...] = ()

    @property
    def builtin(self) -> bool:
        return self.url is None and self.name in BUILTINS

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> ToolSpec:
        name = str(raw["name"])
        url = raw.get("url")
        destinations = tuple(raw.get("destinations") or ())
        timeout = raw.get("timeout_ms") or raw.get("timeoutMs") or DEFAULT_TOOL_TIMEOUT_MS
        params = raw.get("parameters")
        if url is None and name == "end_call":
            description = "End the phone call. Say goodbye first, in the same reply."
            params = params or {"type": "object", "properties": {}}
        elif url is None and name == "transfer_call":
            description = "Transfer the caller to a person at one of the allowed numbers."
            to: dict[str, Any] = {"type": "string", "description": "The number to transfer to."}
            if destinations:
                to["enum"] = list(destinations)
            params = {"type": "object", "properties": {"to": to}, "required": ["to"]}
        else:
            description = ""
        return cls(
            name=name,
            description=str(raw.get("description") or description),
            parameters=params or {"type": "object", "properties": {}},
            url=str(url) if url else None,
            timeout_ms=int(timeout),
            destinations=destinations,
        )

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(slots=True)
class ToolOutcome:
    """What one tool call did: the text the LLM reads back, and the call's own effect."""

    result: Any = None
    error: str | None = None
    chunk: Chunk | None = None
    status: int | None = None

    def for_model(self) -> str:
        if self.error is not None:
            return f"Error: {self.error}"
        text = self.result if isinstance(self.result, str) else json.dumps(self.result)
        return text[:MAX_TOOL_RESULT_CHARS]


# --------------------------------------------------------------------------------- the brain


@dataclass(slots=True)
class _Turn:
    start: int  # index in messages of this turn's first reply message
    texts: list[int] = field(default_factory=list)  # its assistant messages with spoken words


class HostedBrain:
    """One call's conversation with the built-in LLM."""

    def __init__(
        self,
        setup: CallSetup,
        backend: ChatBackend,
        http: aiohttp.ClientSession,
        *,
        on_tool: ToolRecorder,
        on_event: EventRecorder,
        max_tokens: int = 200,
        max_tool_rounds: int = 4,
    ) -> None:
        agent = setup.agent
        self.setup = setup
        self.backend = backend
        self.http = http
        self.on_tool = on_tool
        self.on_event = on_event
        self.max_tokens = max_tokens
        self.max_tool_rounds = max_tool_rounds
        self.model: str | None = agent.model or None
        temperature = agent.temperature
        self.temperature = float(temperature) if temperature is not None else None
        self.tools = {t.name: t for t in map(ToolSpec.from_config, agent.tools or [])}
        self.tool_schemas = [t.schema() for t in self.tools.values()] or None
        self.messages: list[Message] = [{"role": "system", "content": agent.system_prompt or ""}]
        greeting = agent.greeting
        self._turn = _Turn(start=1)
        if agent.first_speaker == "agent" and greeting:
            self._say(greeting)
        self._warm_task: asyncio.Task[None] | None = None
        # The conversation as it was before the latest turn, until that turn is known to
        # stand: a speculative turn the caller went on past is rolled back to it.
        self._before: tuple[TurnRequest, list[Message], _Turn] | None = None

    def start(self) -> None:
        """Read the prompt into the model's cache now, while the greeting plays."""
        self._warm_task = asyncio.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            await self.backend.warm(list(self.messages), tools=self.tool_schemas)
        except LLMError as exc:
            log.warning("hosted_warm_failed", call_id=self.setup.call_id, error=exc.message)

    async def aclose(self) -> None:
        if self._warm_task is not None:
            self._warm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm_task

    # ------------------------------------------------------------------ a turn

    async def reply(self, request: TurnRequest) -> AsyncGenerator[Chunk, None]:
        """Answer one ``agent.message`` turn; raises :class:`TurnError` like a webhook."""
        payload = request.payload
        if request.confirmed is not None:
            turn = _Turn(self._turn.start, list(self._turn.texts))
            self._before = (request, [dict(m) for m in self.messages], turn)
        self._sync_heard(payload.get("recentHistory") or [])
        data = payload["data"]
        if data.get("dtmf"):
            self._user(f"(The caller pressed {data['dtmf']} on the keypad.)")
        elif data.get("transcript"):
            self._user(str(data["transcript"]))
        timing = request.timing
        timing.sent_at = time.perf_counter()
        for round_ in range(self.max_tool_rounds + 1):
            text = pending = ""
            calls: list[ToolCallDelta] = []
            tools = self.tool_schemas if round_ < self.max_tool_rounds else None
            try:
                async for delta in self.backend.stream(
                    self._window(),
                    tools=tools,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                    model=self.model,
                    priority=Priority.LIVE,
                ):
                    if isinstance(delta, TextDelta) and delta.text:
                        text += delta.text
                        first = timing.first_chunk_at is None
                        ready, pending = phrase(pending + delta.text, clauses=first)
                        if ready:
                            if timing.first_chunk_at is None:
                                timing.first_chunk_at = time.perf_counter()
                            yield Chunk(text=ready)
                    elif isinstance(delta, ToolCallDelta):
                        calls.append(delta)
            except LLMError as exc:
                detail = f"hosted LLM ({self.backend.name}): {exc.message}"
                raise TurnError(exc.code, detail) from exc
            if pending.strip():
                if timing.first_chunk_at is None:
                    timing.first_chunk_at = time.perf_counter()
                yield Chunk(text=pending)
            if not calls:
                self._say(text)
                break
            if request.confirmed is not None:  # a tool may do anything: not on speculation
                await request.confirmed.wait()
            outcomes = [
                await self._call_tool(call, str(data.get("turnId") or "")) for call in calls
            ]
            self._tool_round(text, calls, outcomes)
            effects = [o.chunk for o in outcomes if o.chunk is not None]
            if effects:
                for chunk in effects:
                    yield chunk
                break
        timing.done_at = time.perf_counter()

    def forget(self, request: TurnRequest) -> None:
        """Roll the conversation back to before the speculative ``request``."""
        if self._before is not None and self._before[0] is request:
            _, self.messages, self._turn = self._before
        self._before = None

    # ------------------------------------------------------------------ the history

    def _user(self, content: str) -> None:
        self.messages.append({"role": "user", "content": content})
        self._turn = _Turn(start=len(self.messages))

    def _say(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})
        self._turn.texts.append(len(self.messages) - 1)

    def _tool_round(
        self, text: str, calls: list[ToolCallDelta], outcomes: list[ToolOutcome]
    ) -> None:
        self.messages.append(
            {
                "role": "assistant",
                "content": text,
                "tool_calls": [c.as_message_call() for c in calls],
            }
        )
        if text:
            self._turn.texts.append(len(self.messages) - 1)
        for call, outcome in zip(calls, outcomes, strict=True):
            self.messages.append(
                {"role": "tool", "tool_call_id": call.id, "content": outcome.for_model()}
            )

    def _sync_heard(self, history: list[dict[str, Any]]) -> None:
        """Make the last turn's words the ones the caller heard (see the module doc)."""
        tail: list[dict[str, Any]] = []
        for entry in reversed(history):
            if entry.get("role") != "agent":
                break
            tail.append(entry)
        if not tail:
            return
        tail.reverse()
        first, extra = tail[0], tail[1:]
        heard = _norm(str(first.get("content") or ""))
        said = _norm(" ".join(str(self.messages[i]["content"]) for i in self._turn.texts))
        if heard != said and not heard.endswith(said or "\0"):  # a filler before is fine
            if said and said.startswith(heard) and first.get("interrupted"):
                self._cut_to(heard)
            elif heard.startswith(said):
                self._say(heard[len(said) :].strip())
            else:
                self._say(heard)
        for entry in extra:  # lines the session spoke by itself: reprompt, fallback
            self._say(str(entry.get("content") or ""))

    def _cut_to(self, heard: str) -> None:
        left = len(heard)
        for index in self._turn.texts:
            words = _norm(str(self.messages[index]["content"]))
            keep = words[: max(0, left)]
            left -= len(words) + 1
            self.messages[index]["content"] = keep + ("..." if len(keep) < len(words) else "")

    def _window(self) -> list[Message]:
        """System prompt plus the newest whole turns that fit in ``HISTORY_CHARS``."""
        size = sum(len(str(m.get("content") or "")) for m in self.messages)
        if size <= HISTORY_CHARS:
            return self.messages
        start = 1
        while size > HISTORY_CHARS and start < len(self.messages) - 1:
            size -= len(str(self.messages[start].get("content") or ""))
            start += 1
        while start < len(self.messages) and self.messages[start]["role"] != "user":
            start += 1
        return [self.messages[0], *self.messages[start:]]

    # ------------------------------------------------------------------ tools

    async def _call_tool(self, call: ToolCallDelta, turn_id: str) -> ToolOutcome:
        started, clock = time.time(), time.perf_counter()
        spec = self.tools.get(call.name)
        arguments: dict[str, Any] = {}
        if spec is None:
            outcome = ToolOutcome(error=f"there is no tool named {call.name!r}")
        else:
            try:
                arguments = call.parsed_arguments()
                # A built-in checks its own arguments: a transfer to a number outside the
                # schema's enum is a refused transfer (logged), not a malformed call.
                if not spec.builtin:
                    jsonschema.validate(arguments, spec.parameters)
            except (ValueError, jsonschema.ValidationError) as exc:
                detail = exc.message if isinstance(exc, jsonschema.ValidationError) else exc
                outcome = ToolOutcome(error=f"invalid arguments for {call.name}: {detail}")
            else:
                if spec.builtin:
                    outcome = self._builtin(spec, arguments, turn_id)
                else:
                    outcome = await self._post_tool(spec, call, arguments, turn_id)
        elapsed_ms = round((time.perf_counter() - clock) * 1000, 1)
        data: dict[str, Any] = {
            "toolCallId": call.id,
            "name": call.name,
            "arguments": arguments or call.arguments,
            "result": outcome.result,
            "error": outcome.error,
            "status": outcome.status,
            "durationMs": elapsed_ms,
            "turnId": turn_id,
        }
        summary = f"{call.name}({call.arguments or '{}'}) -> " + (
            f"error: {outcome.error}" if outcome.error else outcome.for_model()[:200]
        )
        self.on_tool(summary, started, time.time(), data)
        return outcome

    def _builtin(self, spec: ToolSpec, arguments: dict[str, Any], turn_id: str) -> ToolOutcome:
        if spec.name == "end_call":
            return ToolOutcome(
                result="The call ends once your reply has been spoken.", chunk=Chunk(hangup=True)
            )
        to = arguments.get("to")
        try:
            dial = check_transfer("" if to is None else str(to), spec.destinations)
        except TransferRefused as refused:
            data = {**refused.data(), "turnId": turn_id}
            self.on_event("telephony", refused.log_message(), "warning", data)
            allowed = ", ".join(spec.destinations) or "none"
            return ToolOutcome(
                error=f"the transfer was refused: {refused.detail} Allowed: {allowed}. "
                "The caller is still on the line with you."
            )
        return ToolOutcome(result=f"Transferring the caller to {dial}.", chunk=Chunk(transfer=dial))

    async def _post_tool(
        self, spec: ToolSpec, call: ToolCallDelta, arguments: dict[str, Any], turn_id: str
    ) -> ToolOutcome:
        setup = self.setup
        body = json.dumps(
            {
                "event": "tool.call",
                "timestamp": iso(),
                "agentId": setup.agent_id,
                "data": {
                    "callId": setup.call_id,
                    "turnId": turn_id,
                    "toolCallId": call.id,
                    "name": spec.name,
                    "arguments": arguments,
                    "from": setup.from_number,
                    "to": setup.to_number,
                    "direction": setup.direction,
                },
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **signature_headers(body, setup.webhook_secrets),
        }
        timeout = spec.timeout_ms / 1000
        assert spec.url is not None
        limit = MAX_TOOL_RESULT_CHARS * 4
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                async with self.http.post(
                    spec.url, data=body.encode(), headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    ctype = response.content_type
                    raw = await read_body(response, MAX_TOOL_RESULT_BYTES)
        except TimeoutError:
            return ToolOutcome(error=f"{spec.name} did not answer within {spec.timeout_ms} ms")
        except BodyTooLarge:
            error = (
                f"{spec.name} answered HTTP {status} with more than {MAX_TOOL_RESULT_BYTES} bytes"
            )
            return ToolOutcome(error=error, status=status)
        except aiohttp.ClientError as exc:
            return ToolOutcome(error=f"{spec.name} is unreachable ({describe(exc)})")
        text = raw.decode("utf-8", "replace")
        if status >= 300:
            ms = (time.perf_counter() - sent) * 1000
            answer = answer_summary(status, len(raw), ms, more=len(raw) >= limit)
            return ToolOutcome(error=f"{spec.name} answered {answer}", status=status)
        if ctype == "application/json" or ctype.endswith("+json"):
            try:
                value = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                return ToolOutcome(error=f"{spec.name} answered invalid JSON", status=status)
            if isinstance(value, dict) and "result" in value:
                value = value["result"]
            return ToolOutcome(result=value, status=status)
        return ToolOutcome(result=text, status=status)


def phrase(text: str, *, clauses: bool = True) -> tuple[str, str]:
    """Split streamed words after the last complete sentence (or, with ``clauses``, clause):
    ``(ready, rest)``.

    Tokens come one by one, often slower than the session's pause rule for webhook chunks
    (a gap of ``RELAY_TEXT_PAUSE_MS`` speaks what it has), which would cut speech into single
    words; so the session speaks each piece handed over here at once, without that pause. A
    reply's first clause starts the voice early; after it, whole sentences keep it natural."""
    marks = ".!?,;:" if clauses else ".!?"
    for index in range(len(text) - 2, -1, -1):
        if text[index] in marks and text[index + 1].isspace():
            ready = text[: index + 1]
            if any(c.isalnum() for c in ready):
                return ready, text[index + 1 :]
            break
    return "", text


def _norm(text: str) -> str:
    return " ".join(text.split())
