"""What the relay POSTs to you, as models: the OpenAPI document's ``webhooks`` section.

Three kinds, each signed the Standard Webhooks way (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``):

* the turn, ``agent.message`` (``channel`` voice or sms), answered with reply chunks;
* the hosted mode's ``tool.call``, answered with the tool's result;
* the lifecycle events sent to ``/v1/webhook-endpoints``, one entry per type.

The bodies are built where they are sent (:mod:`relay.turns`, the lifecycle emitters);
tests/api/test_openapi.py checks what those builders produce against these schemas, so the
document cannot drift from the wire.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Direction = Literal["inbound", "outbound"]
CallEventType = Literal[
    "call.queued",
    "call.connecting",
    "call.ringing",
    "call.in_progress",
    "call.completed",
    "call.failed",
]
MessageEventType = Literal[
    "message.received", "message.sent", "message.delivered", "message.failed"
]


class Payload(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class HistoryEntry(Payload):
    role: Literal["user", "agent"]
    content: str
    channel: Literal["voice", "sms"]
    at: AwareDatetime
    interrupted: bool | None = Field(
        default=None, description="Present (true) when the caller cut this agent line short."
    )
    dtmf: bool | None = Field(default=None, description="Present (true) for keys pressed.")


class VoiceTurn(Payload):
    call_id: str
    turn_id: str
    number_id: str | None
    from_: str | None = Field(alias="from")
    to: str | None
    direction: Direction
    transcript: str | None = Field(default=None, description="What speech-to-text heard.")
    confidence: float | None = None
    dtmf: str | None = Field(default=None, description="Keys pressed (instead of a transcript).")
    speculative: bool | None = Field(
        default=None,
        description="Present (true) only for agents with `speculativeTurns`: sent on the "
        "early transcript, before the caller's turn is confirmed. Your reply is spoken if it "
        "is; if the caller goes on, it never is, and a later request names this `turnId` in "
        "`supersedes`. Hold back side effects until then.",
    )
    supersedes: str | None = Field(
        default=None,
        description="The `turnId` of the speculative request this one replaces (the caller "
        "went on speaking): undo or ignore what that request did; its reply was not spoken.",
    )
    metadata: dict[str, Any] = Field(description="The call's metadata, as it was created.")
    variables: dict[str, Any] = Field(description="The call's variables, as it was created.")


class SmsMedia(Payload):
    url: str
    content_type: str | None = None


class SmsTurn(Payload):
    message_id: str
    conversation_id: str
    number_id: str | None
    from_: str = Field(alias="from")
    to: str
    direction: Literal["inbound"]
    text: str
    media: list[SmsMedia] | None = None


class _AgentMessage(Payload):
    event: Literal["agent.message"]
    timestamp: AwareDatetime
    agent_id: str | None
    conversation_state: dict[str, Any] = Field(
        description="The `state` your last reply returned ({} at first)."
    )
    recent_history: list[HistoryEntry] = Field(
        description="The last 20 entries of both channels, oldest first, this turn excluded."
    )


class AgentMessageVoice(_AgentMessage):
    """A caller's turn on a call."""

    channel: Literal["voice"]
    data: VoiceTurn


class AgentMessageSms(_AgentMessage):
    """A text to the agent's number."""

    channel: Literal["sms"]
    data: SmsTurn


class ReplyChunk(Payload):
    """One object of your reply (the whole JSON body, or one NDJSON line). All optional."""

    text: str | None = Field(default=None, description="Words to speak (or to text back).")
    play: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://",
        description=(
            "An audio clip (WAV, MP3, Ogg or FLAC, up to 10 MiB and 120 s) played after the text"
            " before it. Fetched once per project and cached; voice only."
        ),
    )
    interim: bool | None = Field(default=None, description="More chunks follow this one.")
    hangup: bool | None = Field(default=None, description="End the call after speaking.")
    transfer: str | None = Field(default=None, description="A number to transfer the call to.")
    dtmf: str | None = Field(
        default=None, pattern=r"^[0-9*#wW]{1,64}$", description="Digits to send on the call."
    )
    state: dict[str, Any] | None = Field(
        default=None, description="Kept, and sent back as `conversationState` next turn."
    )
    interruptible: bool | None = Field(
        default=None, description="May the caller barge in on this text."
    )


class ToolCallData(Payload):
    call_id: str
    turn_id: str
    tool_call_id: str
    name: str
    arguments: dict[str, Any] = Field(description="Already checked against the tool's schema.")
    from_: str | None = Field(alias="from")
    to: str | None
    direction: Direction


class ToolCall(Payload):
    """The built-in LLM calls one of the agent's tools."""

    event: Literal["tool.call"]
    timestamp: AwareDatetime
    agent_id: str | None
    data: ToolCallData


class CallEventData(Payload):
    call_id: str
    agent_id: str | None
    number_id: str | None
    status: str
    direction: Direction
    from_: str | None = Field(alias="from")
    to: str | None
    failure_reason: str | None
    started_at: AwareDatetime | None
    ended_at: AwareDatetime | None
    metadata: dict[str, Any] | None


class MessageEventData(Payload):
    message_id: str
    conversation_id: str | None
    agent_id: str | None
    number_id: str | None
    direction: Direction
    from_: str = Field(alias="from")
    to: str
    text: str
    media: list[SmsMedia] | None
    status: str
    segments: int | None
    error_code: str | None
    error_message: str | None
    in_reply_to: str | None
    created_at: AwareDatetime


class RecordingReadyData(Payload):
    call_id: str
    agent_id: str | None
    status: str
    duration_seconds: float | None
    size_bytes: int | None
    format: str
    channels: dict[str, str]
    metadata: dict[str, Any] | None


class CallAnalyzedData(Payload):
    call_id: str
    agent_id: str | None
    status: str
    summary: str | None
    sentiment: str | None
    extraction: Any = None
    evaluation: Any = None
    errors: list[dict[str, Any]]
    metadata: dict[str, Any] | None


class TranscriptSegmentData(Payload):
    seq: int
    speaker: Literal["agent", "user", "tool", "dtmf"]
    text: str
    start_ms: int
    end_ms: int
    interrupted: bool


class TranscriptReadyData(Payload):
    call_id: str
    agent_id: str | None
    status: Literal["completed", "failed"]
    text: str = Field(description="One line per segment: `Caller: ...`, `Agent: ...`.")
    segments: list[TranscriptSegmentData]


class BatchCounts(Payload):
    waiting: int
    active: int
    completed: int
    failed: int
    skipped: int
    canceled: int


class BatchEventData(Payload):
    batch_id: str
    agent_id: str | None
    state: Literal["scheduled", "running", "paused", "canceled", "completed"]
    counts: BatchCounts = Field(description="Recipients by state.")
    invalid: int = Field(description="Rows refused when the batch was created.")
    created_at: AwareDatetime
    started_at: AwareDatetime | None
    completed_at: AwareDatetime | None


class AgentInterruptedData(Payload):
    call_id: str
    turn_id: str = Field(description="The turn whose reply was cut (its `agent.message`).")
    heard: str = Field(description="What the caller heard of the reply before the cut.")
    spoken_ms: int = Field(description="How long the reply had played.")


class _Lifecycle(Payload):
    id: str = Field(description="The event's id; `webhook-id` is the delivery's.")
    timestamp: AwareDatetime


class CallLifecycleEvent(_Lifecycle):
    type: CallEventType
    data: CallEventData


class MessageLifecycleEvent(_Lifecycle):
    type: MessageEventType
    data: MessageEventData


class RecordingReadyEvent(_Lifecycle):
    type: Literal["recording.ready"]
    data: RecordingReadyData


class CallAnalyzedEvent(_Lifecycle):
    type: Literal["call.analyzed"]
    data: CallAnalyzedData


class TranscriptReadyEvent(_Lifecycle):
    type: Literal["transcript.ready"]
    data: TranscriptReadyData


class BatchLifecycleEvent(_Lifecycle):
    type: Literal["batch.started", "batch.completed"]
    data: BatchEventData


class AgentInterruptedEvent(_Lifecycle):
    type: Literal["agent.interrupted"]
    data: AgentInterruptedData


LIFECYCLE: dict[str, type[_Lifecycle]] = {
    **dict.fromkeys(get_args(CallEventType), CallLifecycleEvent),
    "transcript.ready": TranscriptReadyEvent,
    "agent.interrupted": AgentInterruptedEvent,
    "recording.ready": RecordingReadyEvent,
    "call.analyzed": CallAnalyzedEvent,
    **dict.fromkeys(get_args(MessageEventType), MessageLifecycleEvent),
    "batch.started": BatchLifecycleEvent,
    "batch.completed": BatchLifecycleEvent,
}
MODELS: tuple[type[BaseModel], ...] = (
    AgentMessageVoice,
    AgentMessageSms,
    ReplyChunk,
    ToolCall,
    *dict.fromkeys(LIFECYCLE.values()),
)

SIGNATURE_HEADERS = [
    {"name": "webhook-id", "in": "header", "required": True, "schema": {"type": "string"}},
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
        "description": "Unix seconds; refuse one more than 5 minutes off.",
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
        "description": "Space-separated `v1,<base64 HMAC-SHA256>` of `id.timestamp.body`, one "
        "per secret in force (two while a rotated secret's grace period lasts).",
    },
]


def _operation(summary: str, body: dict[str, Any], responses: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": SIGNATURE_HEADERS,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": responses,
        }
    }


def webhooks(ref: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    """The ``webhooks`` section; ``ref`` maps each of :data:`MODELS` to its schema ($ref)."""
    chunk, voice, sms = ref[ReplyChunk], ref[AgentMessageVoice], ref[AgentMessageSms]
    turn = {
        "oneOf": [voice, sms],
        "discriminator": {
            "propertyName": "channel",
            "mapping": {"voice": voice["$ref"], "sms": sms["$ref"]},
        },
    }
    out: dict[str, Any] = {
        "agent.message": _operation(
            "A turn of a call or a text, for the agent's webhookUrl",
            turn,
            {
                "200": {
                    "description": "The reply: one ReplyChunk as JSON, or a stream of them, one "
                    "per line (NDJSON), each used the moment its line ends; the last one has "
                    "no `interim`.",
                    "content": {
                        "application/json": {"schema": chunk},
                        "application/x-ndjson": {"schema": chunk},
                    },
                },
                "default": {"description": "A failed turn: the fallback line is used."},
            },
        ),
        "tool.call": _operation(
            "The built-in LLM calls a tool (the tool's url)",
            ref[ToolCall],
            {
                "200": {
                    "description": "The result, read back to the LLM: any JSON (e.g. "
                    '`{"result": ...}`) or text, up to 32,000 bytes.',
                    "content": {
                        "application/json": {"schema": {}},
                        "text/plain": {"schema": {"type": "string"}},
                    },
                },
                "default": {"description": "The LLM is told the tool failed."},
            },
        ),
    }
    delivered = {
        "2XX": {"description": "Delivered (within 15 s)."},
        "410": {"description": "Gone: the endpoint is disabled."},
        "default": {"description": "Retried later (429 and 503 after their Retry-After)."},
    }
    for name, model in LIFECYCLE.items():
        body = {"allOf": [ref[model], {"properties": {"type": {"const": name}}}]}
        out[name] = _operation(f"Lifecycle event {name}", body, delivered)
    return out
