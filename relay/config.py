"""Settings, read from ``RELAY_*`` environment variables and command-line flags."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, IPvAnyAddress
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./relay.db"
_DURATION = r"\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h)?\s*"
DURATIONS_PATTERN = rf"^{_DURATION}(,{_DURATION})*$"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Settings(BaseSettings):
    """Every knob of the relay. Each field ``foo_bar`` is set by ``RELAY_FOO_BAR``."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = ""
    database_url: str = DEFAULT_DATABASE_URL
    # PostgreSQL only: the schema (search_path) holding the relay's tables, so several
    # relays can share one database. Empty: the server's default search_path.
    database_schema: str = ""
    data_dir: Path = Path("./data")
    auto_migrate: bool = True

    allow_private_webhooks: bool = False
    # Names the webhook client resolves to a fixed address instead of asking DNS (as curl's
    # --resolve): JSON, {"hooks.test": "127.0.0.1"}. The address is still checked.
    webhook_hosts: dict[str, IPvAnyAddress] = Field(default_factory=dict)
    webhook_secret_grace_seconds: int = Field(default=24 * 3600, ge=0)

    # Carriers. The sim carrier's endpoints exist only while this is on (the embedded
    # default); turn it off in production. Twilio's webhooks are verified with the auth
    # token, or with the shared key when Twilio signs with one.
    sim_enabled: bool = True
    twilio_auth_token: str = Field(default="", repr=False)
    twilio_webhook_signing_key: str = ""
    # Outbound texts through Twilio's REST API. The base URL is for a test double or proxy.
    twilio_account_sid: str = ""
    twilio_api_base_url: str = ""
    # Telnyx's REST API, for a test double or proxy (accounts are per project).
    telnyx_api_base_url: str = ""
    # Where Plivo's REST API is (a test double, a proxy); empty: api.plivo.com.
    plivo_api_base_url: str = ""
    # How long a Telnyx or Plivo REST request may take before it counts as unreachable.
    carrier_api_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Carrier accounts' credentials are stored encrypted with this Fernet key (several,
    # comma-separated, while rotating: the first encrypts). `relay keys encryption` makes one.
    encryption_key: str = Field(default="", repr=False)

    rate_limit_per_second: float = Field(default=50.0, gt=0)
    rate_limit_burst: int = Field(default=100, ge=1)

    max_body_bytes: int = 1024 * 1024
    shutdown_timeout_seconds: float = 30.0
    # SIGTERM: live calls may go on this long before they are ended (failed /
    # relay_restart); the node takes no new ones meanwhile. 0 ends them at once.
    drain_seconds: float = Field(default=0.0, ge=0, le=3600)
    # Processes of `relay serve` sharing the port, each a node; 0: one per core on
    # PostgreSQL, 1 on SQLite (one writer, so never more).
    workers: int = Field(default=0, ge=0, le=64)
    log_level: str = "INFO"
    log_json: bool = True

    # Lifecycle webhooks: the delay before each attempt ("0,5s,5m,..."; units ms, s, m, h),
    # so its length is the number of attempts. Tests and benchmarks compress it.
    webhook_retry_schedule: str = Field(
        default="0,5s,5m,30m,2h,5h,10h,10h", pattern=DURATIONS_PATTERN
    )
    webhook_delivery_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    # How often the delivery worker looks for work committed by other processes; commits in
    # this process wake it at once.
    webhook_delivery_poll_seconds: float = Field(default=0.05, gt=0, le=60)
    webhook_delivery_concurrency: int = Field(default=64, ge=1, le=1000)
    # This process's name for crash recovery. Default ``hostname:port``, stable across a
    # restart, so a restarted relay knows the calls and deliveries it held before it died.
    node_id: str = Field(default="", max_length=100)
    # Projects (by name, comma-separated) whose secret keys may list the nodes
    # (GET /v1/nodes); the nodes are the deployment's, so by default no project may.
    admin_projects: str = ""
    # A node whose heartbeat is older than this is dead; its live calls are closed.
    node_timeout_seconds: float = Field(default=30.0, ge=1)
    # An outbound call that rings this long unanswered fails with ``no_answer``.
    outbound_ring_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # How often the dialling queue looks for calls that may start and calls that ended
    # (it also looks at once when a call or batch is created).
    dial_queue_interval_seconds: float = Field(default=1.0, gt=0, le=10)
    # Outbound calls the relays on this database start per second on each carrier, at most
    # (0: no limit): set it to your carrier account's calls-per-second limit.
    dial_rate_per_second: float = Field(default=0.0, ge=0, le=1000)

    # Secret for signing short-lived URLs and media tokens. Generated per process if empty,
    # which is fine for one node; set it when several nodes serve the same calls.
    signing_secret: str = ""

    # Web calls: the ICE servers (STUN/TURN) both the page and the relay's peer use, JSON as
    # in RTCConfiguration: [{"urls": ["stun:stun.example.com:3478"]}, {"urls": [...],
    # "username": ..., "credential": ...}]. Empty: host candidates only (a LAN, or a relay
    # with a public address).
    webrtc_ice_servers: list[dict[str, str | list[str]]] = Field(default_factory=list)
    # LiveKit, the scale-out path for web calls (README, "LiveKit rooms"): LiveKit's own
    # variable names are read too. Rooms and tokens only, so far.
    livekit_url: str = Field(
        default="", validation_alias=AliasChoices("livekit_url", "RELAY_LIVEKIT_URL", "LIVEKIT_URL")
    )
    livekit_api_key: str = Field(
        default="",
        validation_alias=AliasChoices(
            "livekit_api_key", "RELAY_LIVEKIT_API_KEY", "LIVEKIT_API_KEY"
        ),
    )
    livekit_api_secret: str = Field(
        default="",
        validation_alias=AliasChoices(
            "livekit_api_secret", "RELAY_LIVEKIT_API_SECRET", "LIVEKIT_API_SECRET"
        ),
    )

    # Voice engine. Per-agent ``stt`` / ``tts`` settings override the first two.
    stt: Literal["whisper", "whisper-multilingual", "pocketsphinx"] = "whisper"
    tts: Literal["piper", "espeak"] = "piper"
    # Silence after speech before STT starts on the utterance so far ("first silence").
    early_stt_silence_ms: int = Field(default=150, ge=50, le=2000)
    # Silence after speech before the caller's turn is over (endpointing).
    endpointing_delay_ms: int = Field(default=500, ge=100, le=5000)
    # Caller speech needed to barge in on interruptible agent speech.
    barge_in_min_ms: int = Field(default=300, ge=50, le=3000)
    # A text fragment without a sentence end is spoken once the webhook stream pauses this long.
    text_pause_ms: int = Field(default=200, ge=0, le=5000)
    # Caller DTMF digits are gathered into one turn until '#' or this much quiet.
    dtmf_gather_ms: int = Field(default=800, ge=0, le=10000)
    # Threads for STT/TTS inference, shared by every call of the process.
    inference_threads: int = Field(default=2, ge=1, le=64)
    # Synthesized phrases kept in memory (greetings, fillers, fallbacks, repeated lines),
    # least recently used dropped first; 0 turns the cache off.
    tts_cache_mb: int = Field(default=32, ge=0, le=4096)

    # Hosted mode and post-call intelligence (``hosted_llm``). With a base URL, an
    # OpenAI-compatible endpoint (OpenAI, Groq, vLLM, Ollama, a llama.cpp server) answers, with
    # RELAY_LLM_MODEL unless the agent names its own ``model``. Without one, the embedded
    # model (the ``local-llm`` extra) answers; its joined weights live in the model dir.
    llm_base_url: str = ""
    llm_api_key: str = ""
    llm_model: str = ""
    llm_local_model: Literal["qwen-1.5b", "qwen-0.5b"] = "qwen-1.5b"
    llm_model_dir: Path | None = None  # default ~/.cache/conversation-relay/models
    llm_threads: int = Field(default=2, ge=1, le=64)
    llm_cache_mb: int = Field(default=1024, ge=0, le=65536)
    # No first token (or a stalled stream) for this long fails the turn: fallback line.
    llm_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    llm_max_tokens: int = Field(default=200, ge=16, le=4096)
    # A hosted turn may call tools this many rounds before it must answer in words.
    llm_max_tool_rounds: int = Field(default=4, ge=1, le=16)
    # Post-call jobs: the delay before each attempt (its length is the number of attempts),
    # and how often a node looks for jobs that another node committed.
    post_call_retry_schedule: str = Field(default="0,10s,1m,5m", pattern=DURATIONS_PATTERN)
    post_call_poll_seconds: float = Field(default=1.0, gt=0, le=600)
    # How often each node deletes recordings past their project's retention.
    recording_purge_seconds: float = Field(default=3600.0, gt=0)

    def effective_public_url(self) -> str:
        """The base URL carriers and webhooks are given to reach this relay."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def retry_schedule(self) -> tuple[float, ...]:
        """Seconds to wait before each webhook delivery attempt."""
        return parse_durations(self.webhook_retry_schedule)

    def effective_node_id(self) -> str:
        return self.node_id or f"{socket.gethostname()}:{self.port}"

    def admin_project_names(self) -> set[str]:
        return {name.strip() for name in self.admin_projects.split(",") if name.strip()}

    def post_call_schedule(self) -> tuple[float, ...]:
        """Seconds to wait before each post-call analysis attempt."""
        return parse_durations(self.post_call_retry_schedule)


def parse_durations(text: str) -> tuple[float, ...]:
    """``"0,5s,5m,2h"`` to seconds; a bare number is seconds."""
    out = []
    for item in text.split(","):
        item = item.strip()
        unit = next((u for u in ("ms", "s", "m", "h") if item.endswith(u)), "s")
        value = item[: -len(unit)] if item.endswith(unit) else item
        out.append(float(value.strip()) * _UNITS[unit])
    return tuple(out)
