"""The nested settings an agent (or an inline call) carries, each checked where it is parsed:
post-call analysis, tools and their transfer destinations, and what an outbound call does
when a voicemail answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import jsonschema
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from relay.api.schema import APIModel, OutModel
from relay.transfer import MAX_DESTINATION, InvalidDestination, destination

BUILTIN_TOOLS = ("end_call", "transfer_call")
TOOL_URL_REQUIRED = "A tool needs a url, except the built-in end_call and transfer_call."
TOOL_NAMES_UNIQUE = "Tool names must be unique."
TOOL_PARAMETERS_OBJECT = "parameters must be a JSON schema of type 'object'."
DESTINATIONS_ONLY_TRANSFER = "destinations apply to the built-in transfer_call only."
DESTINATIONS_REQUIRED = (
    "The built-in transfer_call needs destinations: the E.164 numbers or sip: URIs it may "
    "transfer to."
)
MAX_DESTINATIONS = 20

VoiceMode = Literal["webhook", "hosted"]


def _destination(value: str) -> str:
    try:
        return destination(value)
    except InvalidDestination as exc:
        raise PydanticCustomError("invalid_transfer_destination", str(exc)) from exc


# Checked by relay.transfer (our own code, not a length constraint) so that every refusal
# carries the one code; the schema still shows the bound.
TransferDestination = Annotated[
    str,
    AfterValidator(_destination),
    Field(
        json_schema_extra={"maxLength": MAX_DESTINATION},
        description="An E.164 number (not premium-rate) or sip:user@host (a public host).",
    ),
]


class PostCallExtraction(APIModel):
    schema_: dict[str, Any] = Field(
        alias="schema", description="JSON schema the result must match."
    )
    instructions: str | None = Field(default=None, max_length=4000)


class PostCallEvaluation(APIModel):
    criteria: list[str] = Field(min_length=1, max_length=20)


class PostCallConfig(APIModel):
    summary: bool = True
    sentiment: bool = False
    structured_extraction: PostCallExtraction | None = None
    evaluation: PostCallEvaluation | None = None


class AgentTool(APIModel):
    """A function the hosted LLM may call: the relay POSTs a signed ``tool.call`` event to
    ``url`` and gives the LLM the answer. ``end_call`` and ``transfer_call`` without a url
    are built in."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
    description: str | None = Field(default=None, max_length=1000)
    parameters: dict[str, Any] | None = Field(
        default=None, description="JSON schema (type object) of the arguments."
    )
    url: str | None = Field(default=None, max_length=2000, description="Gets tool.call.")
    timeout_ms: int = Field(default=5000, ge=100, le=30000)
    destinations: list[TransferDestination] | None = Field(
        default=None,
        max_length=MAX_DESTINATIONS,
        description="transfer_call (required): the only destinations it may transfer to.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else str(TypeAdapter(AnyHttpUrl).validate_python(value))

    @field_validator("parameters")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            if value.get("type") != "object":
                raise ValueError(TOOL_PARAMETERS_OBJECT)
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"parameters is not a valid JSON schema: {exc.message}") from exc
        return value

    @model_validator(mode="after")
    def _kind(self) -> AgentTool:
        if self.url is None and self.name not in BUILTIN_TOOLS:
            raise ValueError(TOOL_URL_REQUIRED)
        if self.destinations is not None and (self.url or self.name != "transfer_call"):
            raise ValueError(DESTINATIONS_ONLY_TRANSFER)
        if self.url is None and self.name == "transfer_call" and not self.destinations:
            raise PydanticCustomError("transfer_destinations_required", DESTINATIONS_REQUIRED)
        return self


class AgentToolOut(OutModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    url: str | None = None
    timeout_ms: int = 5000
    destinations: list[str] | None = None


def unique_tool_names(value: list[AgentTool] | None) -> list[AgentTool] | None:
    """A field validator: an agent's (or an inline call's) tools have distinct names."""
    if value is not None and len({t.name for t in value}) != len(value):
        raise ValueError(TOOL_NAMES_UNIQUE)
    return value


LanguageKey = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")]
BackchannelWord = Annotated[str, StringConstraints(min_length=1, max_length=40)]
BackchannelList = Annotated[list[BackchannelWord], Field(min_length=1, max_length=200)]


VOICEMAIL_MESSAGE_REQUIRED = "voicemail.action 'leave_message' needs a message to leave."
VOICEMAIL_MESSAGE_UNUSED = "voicemail.message goes with action 'leave_message' only."
MAX_VOICEMAIL_MESSAGE = 1000


class VoicemailSettings(APIModel):
    """What an outbound call does when the carrier's answering-machine detection says a
    machine answered (Twilio, Telnyx, Plivo; README "Carriers")."""

    action: Literal["hangup", "leave_message"] = Field(
        description="`hangup`: end the call at once. `leave_message`: after the greeting "
        "(the beep, where the carrier detects it), speak `message` and hang up."
    )
    message: str | None = Field(
        default=None,
        max_length=MAX_VOICEMAIL_MESSAGE,
        description="Spoken with the call's voice, not interruptible.",
    )

    @model_validator(mode="after")
    def _message(self) -> VoicemailSettings:
        if self.action == "leave_message" and not (self.message or "").strip():
            raise PydanticCustomError("voicemail_message_required", VOICEMAIL_MESSAGE_REQUIRED)
        if self.action == "hangup" and self.message is not None:
            raise PydanticCustomError("voicemail_message_unused", VOICEMAIL_MESSAGE_UNUSED)
        return self
