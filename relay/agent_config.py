"""An agent's settings as one typed, frozen value: the one place every default lives.

The API stores an agent's settings as a JSON object with snake_case keys (``Agent.config``)
and a call freezes them, defaults applied, into ``Call.agent_snapshot``. Everything that
runs a conversation (the engine, the hosted brain, SMS) reads them through
:class:`AgentConfig`, never through ``dict.get`` with a default restated at the call site.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

VoiceMode = Literal["webhook", "hosted"]
FirstSpeaker = Literal["agent", "user"]
InactivityAction = Literal["reprompt", "hangup"]


DEFAULT_LANGUAGE = "en-US"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The settings an agent answers with. The fields from ``system_prompt`` to ``tools``
    are the ones ``Agent.config`` stores; the rest are copied from the agent's columns (or
    the inline call) when a call freezes them."""

    system_prompt: str | None = None
    greeting: str | None = None
    first_speaker: FirstSpeaker = "agent"
    voice: str | None = None
    language: str = DEFAULT_LANGUAGE
    model: str | None = None
    temperature: float | None = None
    interruptible: bool = True
    # Turn-taking (relay.engine.backchannel): how readily caller speech cuts the agent, and
    # the acknowledgements per language ("en": [...]) that never do; None: the defaults.
    interruption_sensitivity: Literal["low", "medium", "high"] = "medium"
    backchannel_words: dict[str, list[str]] | None = None
    # How much longer a turn whose transcript stops mid-sentence waits (relay.engine.turn_end)
    unfinished_turn_ms: int = 700
    # Webhook mode: start the turn on the early transcript (relay.engine.speculation); the
    # webhook opts in because a request may then be superseded. Hosted mode always does.
    speculative_turns: bool = False
    max_duration_seconds: int | None = 3000
    inactivity_timeout_seconds: int | None = 30
    inactivity_action: InactivityAction = "reprompt"
    recording_enabled: bool = False
    post_call: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    stt: str | None = None
    tts: str | None = None
    fallback_text: str | None = None
    filler_after_ms: int | None = None
    filler_text: str | None = None
    max_webhook_failures: int = 3
    help_text: str | None = None
    # Where a webhook's ``transfer`` may send a call (relay.transfer); none: nowhere.
    transfer_destinations: list[str] | None = None
    # When its outbound calls may ring (relay.calling_hours); None: the project's policy.
    calling_hours: dict[str, Any] | None = None
    # Outbound calls ask the carrier for answering-machine detection when set
    # (relay.calls.voicemail): {"action": "hangup" | "leave_message", "message": ...}.
    voicemail: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    # Frozen with a call, not part of Agent.config.
    name: str | None = None
    voice_mode: VoiceMode = "webhook"
    webhook_url: str | None = None
    webhook_timeout_ms: int = 30000
    variables: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> AgentConfig:
        """From ``Agent.config`` or a call's snapshot: unknown keys are ignored, a missing key
        takes its default, and so does a null where the setting cannot be null (a null
        ``maxDurationSeconds`` or ``inactivityTimeoutSeconds`` means no limit)."""
        given = {
            k: stored[k]
            for k in _NAMES
            if k in stored and (k in _NULLABLE or stored[k] is not None)
        }
        return cls(**given)

    def stored(self) -> dict[str, Any]:
        """The settings ``Agent.config`` keeps, defaults included, snake_case."""
        values = asdict(self)
        return {k: values[k] for k in STORED_KEYS}

    def __getitem__(self, name: str) -> Any:
        """A setting by its stored name, as the call's snapshot row has it."""
        if name not in _NAMES:
            raise KeyError(name)
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return name in _NAMES

    def with_prompts(self, system_prompt: str | None, greeting: str | None) -> AgentConfig:
        return replace(self, system_prompt=system_prompt, greeting=greeting)


_NAMES = tuple(f.name for f in fields(AgentConfig))
_NULLABLE = frozenset(f.name for f in fields(AgentConfig) if "None" in str(f.type))
# The keys of ``Agent.config``: every field up to ``tools``.
STORED_KEYS = _NAMES[: _NAMES.index("tools") + 1]
# ``Agent.config``'s defaults, for the API's responses and its PATCH semantics.
STORED_DEFAULTS: dict[str, Any] = AgentConfig().stored()

__all__ = ["DEFAULT_LANGUAGE", "STORED_DEFAULTS", "STORED_KEYS", "AgentConfig", "VoiceMode"]
