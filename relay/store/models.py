"""The relay's tables. Every tenant-owned row carries ``project_id``; every query filters on it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from relay.signing import Secrets


def utcnow() -> datetime:
    return datetime.now(UTC)


# The last time bound on SQLite and its text: a row's times, and a statement's, are mostly
# one ``now`` bound several times over. (One tuple, swapped whole: safe across threads.)
_last_bound: tuple[datetime | None, str | None] = (None, None)


def _sqlite_text(value: datetime | None) -> str | None:
    """What SQLAlchemy's SQLite ``DATETIME`` stores ("2026-11-22 06:00:00.000000": the
    value's own fields, microseconds always), in one C call instead of a %-format of seven
    fields."""
    global _last_bound
    last = _last_bound
    if value is last[0]:
        return last[1]
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    text = value.isoformat(" ", "microseconds")[:26]
    _last_bound = (value, text)
    return text


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware on the way out on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":
            return _sqlite_text
        return super().bind_processor(dialect)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Days a call recording is kept before the purge job deletes it (30-365).
    recording_retention_days: Mapped[int] = mapped_column(
        Integer, default=90, server_default=text("90")
    )
    # When outbound calls may ring, by the callee's local time (relay.calling_hours); an
    # agent's own policy overrides it. None: no limit.
    calling_hours: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # How many of its outbound calls may be live at once (relay.calls.dial_queue); None: no cap.
    max_concurrent_calls: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # secret | publishable
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    allowed_agents: Mapped[list[Any] | None] = mapped_column(JSON)
    allowed_channels: Mapped[list[Any] | None] = mapped_column(JSON)
    # Publishable keys only: the pages that may use it, the numbers it may ring (None: its
    # caller number's country), and what a call it makes may carry.
    allowed_origins: Mapped[list[Any] | None] = mapped_column(JSON)
    allowed_destinations: Mapped[list[Any] | None] = mapped_column(JSON)
    allow_variables: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    allow_post_call: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    max_metadata_bytes: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the key stops being honoured: now or past once revoked, later while a rotated
    # key's grace period runs; None while it is live.
    revoked_at: Mapped[datetime | None] = mapped_column()


class Agent(Base):
    __tablename__ = "agents"
    __table_args__ = (Index("ix_agents_project", "project_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    voice_mode: Mapped[str] = mapped_column(String(16), default="webhook")
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str] = mapped_column(String(100))
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(100))
    previous_webhook_secret_expires_at: Mapped[datetime | None] = mapped_column()
    webhook_timeout_ms: Mapped[int] = mapped_column(Integer, default=30000)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column()

    def signing_secrets(self) -> tuple[str, ...]:
        """The secrets a request to its webhook is signed with: the current one, plus the
        previous one while its grace period runs."""
        return Secrets(
            self.webhook_secret,
            self.previous_webhook_secret,
            self.previous_webhook_secret_expires_at,
        ).live(utcnow())


class CarrierAccount(Base):
    """A project's account at a carrier. ``account_sid`` is the carrier's name for the account
    (Twilio's AccountSid; inbound webhooks carry it); ``credentials`` is a Fernet token
    (:mod:`relay.secretbox`), never the secret itself; ``credentials_hint`` is what the API
    shows of it."""

    __tablename__ = "carrier_accounts"
    __table_args__ = (
        Index("ix_carrier_accounts_project", "project_id", "id"),
        Index("ix_carrier_accounts_sid", "provider", "account_sid"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(20))
    name: Mapped[str | None] = mapped_column(String(200))
    account_sid: Mapped[str | None] = mapped_column(String(100))
    credentials: Mapped[str | None] = mapped_column(Text)
    credentials_hint: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column()


class Number(Base):
    """``carrier_key`` names the carrier account the number is routed by: ``sim:<project>``,
    ``twilio:<AccountSid>``, or ``twilio:deployment`` for the account in ``RELAY_TWILIO_*``.
    A number is active once per key; inbound calls and texts are routed by (key, number)."""

    __tablename__ = "numbers"
    __table_args__ = (
        Index("ix_numbers_project", "project_id", "id"),
        Index(
            "uq_numbers_active_route",
            "carrier_key",
            "phone_number",
            unique=True,
            sqlite_where=text("released_at IS NULL"),
            postgresql_where=text("released_at IS NULL"),
        ),
        Index("ix_numbers_agent", "agent_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    phone_number: Mapped[str] = mapped_column(String(20))
    country: Mapped[str] = mapped_column(String(2))
    provider: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(20), default="provisioned")  # or imported
    credentials_ref: Mapped[str | None] = mapped_column(String(200))
    provider_sid: Mapped[str | None] = mapped_column(String(100))
    carrier_account_id: Mapped[str | None] = mapped_column(
        ForeignKey("carrier_accounts.id", ondelete="SET NULL")
    )
    carrier_key: Mapped[str] = mapped_column(String(120))
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    capabilities: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column()


class Call(Base):
    """One conversation on one channel. ``agent_snapshot`` freezes the agent at creation."""

    __tablename__ = "calls"
    __table_args__ = (
        Index("ix_calls_project", "project_id", "id"),
        Index("ix_calls_status", "status"),
        Index("ix_calls_carrier_call", "carrier_call_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    number_id: Mapped[str | None] = mapped_column(ForeignKey("numbers.id", ondelete="SET NULL"))
    direction: Mapped[str] = mapped_column(String(10))  # inbound | outbound
    connection_type: Mapped[str] = mapped_column(String(20))  # twilio | websocket | sim | ...
    from_number: Mapped[str | None] = mapped_column(String(40))
    to_number: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    failure_reason: Mapped[str | None] = mapped_column(String(40))
    voice_mode: Mapped[str] = mapped_column(String(16))
    agent_snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    call_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    conversation_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    carrier_call_id: Mapped[str | None] = mapped_column(String(100))
    # The carrier's answering-machine detection: human | machine | unknown (None: not asked).
    answered_by: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()


class CallEvent(Base):
    """The call's log: what happened, from which part, in order."""

    __tablename__ = "call_events"
    __table_args__ = (Index("ix_call_events_call", "call_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    level: Mapped[str] = mapped_column(String(10))  # info | warning | error
    source: Mapped[str] = mapped_column(String(20))  # lifecycle|webhook|telephony|engine|post_call
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TranscriptSegment(Base):
    __tablename__ = "transcript_segments"
    __table_args__ = (Index("ix_segments_call", "call_id", "seq"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    speaker: Mapped[str] = mapped_column(String(10))  # agent | user | tool | dtmf
    text: Mapped[str] = mapped_column(Text)
    start_ms: Mapped[int] = mapped_column(Integer)
    end_ms: Mapped[int] = mapped_column(Integer)
    interrupted: Mapped[bool] = mapped_column(default=False)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class TurnMetrics(Base):
    """Per-turn latency breakdown, milliseconds (``None`` where a stage did not run)."""

    __tablename__ = "turn_metrics"
    __table_args__ = (Index("ix_turn_metrics_call", "call_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    turn_id: Mapped[str] = mapped_column(String(40))
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Recording(Base):
    """A call's stereo recording (agent left, caller right; OGG/Opus under the data dir).

    ``pending`` while the call runs and its audio is encoded, then ``ready`` or ``failed``;
    ``expired`` once the retention purge has deleted the file. ``path`` is relative to
    ``RELAY_DATA_DIR``. ``claimed_by`` is the node whose engine spools and encodes it."""

    __tablename__ = "recordings"
    __table_args__ = (Index("ix_recordings_due", "status", "created_at"),)

    call_id: Mapped[str] = mapped_column(
        ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True
    )
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(12))  # pending | ready | failed | expired
    path: Mapped[str] = mapped_column(Text)
    sample_rate: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column()
    purged_at: Mapped[datetime | None] = mapped_column()


class CallAnalysis(Base):
    """Post-call intelligence for one call: the job (``pending`` until done, leased through
    ``next_attempt_at`` while a node works on it) and its results."""

    __tablename__ = "call_analyses"
    __table_args__ = (Index("ix_call_analyses_due", "status", "next_attempt_at"),)

    call_id: Mapped[str] = mapped_column(
        ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True
    )
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(12))  # pending | completed | failed
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # the effective postCall settings
    summary: Mapped[str | None] = mapped_column(Text)
    sentiment: Mapped[str | None] = mapped_column(String(10))  # positive | neutral | negative
    extraction: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    evaluation: Mapped[list[Any] | None] = mapped_column(JSON)
    errors: Mapped[list[Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    model: Mapped[str | None] = mapped_column(String(200))
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()


class LifecycleEvent(Base):
    """A lifecycle event (``call.completed``, ``message.received``...), written in the SAME
    transaction as the change it reports. The delivery worker fans each one out to the
    project's webhook endpoints; ``ordering_key`` (a call or conversation id) keeps order."""

    __tablename__ = "lifecycle_events"
    __table_args__ = (
        Index("ix_lifecycle_events_project", "project_id", "id"),
        Index("ix_lifecycle_events_pending", "dispatched_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(40))
    ordering_key: Mapped[str | None] = mapped_column(String(60))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column()


class WebhookEndpoint(Base):
    """Where a project's lifecycle events go. ``events`` is a filter (None: every type)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_project", "project_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(500))
    events: Mapped[list[Any] | None] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))
    # After a rotation, the secret it replaced, which still signs until it expires.
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column()
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def secrets(self) -> Secrets:
        return Secrets(self.secret, self.previous_secret, self.previous_secret_expires_at)


class WebhookDelivery(Base):
    """One lifecycle event for one endpoint. ``id`` is the ``webhook-id`` header: the same on
    every attempt, so receivers can drop duplicates. While in flight a delivery stays
    ``pending`` with ``next_attempt_at`` pushed out as a lease held by ``claimed_by``."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_order", "endpoint_id", "ordering_key", "status"),
        Index("uq_webhook_deliveries_event", "endpoint_id", "event_id", unique=True),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(ForeignKey("lifecycle_events.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(40))
    ordering_key: Mapped[str | None] = mapped_column(String(60))
    event_created_at: Mapped[datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(12), default="pending")  # succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()


class WebhookAttempt(Base):
    """One HTTP request of a delivery: what came back, how long it took, what went wrong."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "number"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column()
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class RelayNode(Base):
    """A running relay process, for crash recovery: a node whose heartbeat stopped is dead."""

    __tablename__ = "relay_nodes"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class NodeCommand(Base):
    """Something a node asks the node holding a live call to do (``kind``: ``end``)."""

    __tablename__ = "node_commands"
    __table_args__ = (Index("ix_node_commands_node", "node_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(100))
    call_id: Mapped[str] = mapped_column(String(40), ForeignKey("calls.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CallLease(Base):
    """Which node runs a live call. When that node dies, another closes the call."""

    __tablename__ = "call_leases"
    __table_args__ = (Index("ix_call_leases_node", "node_id"),)

    call_id: Mapped[str] = mapped_column(
        ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True
    )
    node_id: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Batch(Base):
    """Many outbound calls from one agent, dialled through the queue (relay.calls.batches)."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_project", "project_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    number_id: Mapped[str | None] = mapped_column(ForeignKey("numbers.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(String(12))  # scheduled|running|paused|canceled|completed
    scheduled_at: Mapped[datetime | None] = mapped_column()
    # A calling-hours policy for this batch's calls (else the agent's, else the project's).
    window: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)
    retry: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    invalid: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()


class DialRate(Base):
    """A carrier's dial rate, shared by every relay on the database: the generic cell rate
    algorithm's theoretical arrival time of the next dial (``tat``, seconds since the epoch)."""

    __tablename__ = "dial_rates"

    carrier: Mapped[str] = mapped_column(String(40), primary_key=True)
    tat: Mapped[float] = mapped_column(Float)


class DialJob(Base):
    """One recipient in the dialling queue: every outbound call is dialled through one.

    ``waiting`` until ``not_before``, then claimed (``active``, by ``node_id``) with its
    current call in ``call_id``; it ends ``completed``, ``failed``, ``skipped`` or
    ``canceled``, or waits again for a retry by its batch's policy."""

    __tablename__ = "dial_jobs"
    __table_args__ = (
        Index("ix_dial_jobs_ready", "state", "not_before"),
        Index("ix_dial_jobs_batch", "batch_id", "position"),
        Index("ix_dial_jobs_project", "project_id", "state"),
        Index("ix_dial_jobs_call", "call_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    to_number: Mapped[str] = mapped_column(String(40))
    variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    state: Mapped[str] = mapped_column(String(10))
    not_before: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    call_id: Mapped[str | None] = mapped_column(String(40))
    call_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    node_id: Mapped[str | None] = mapped_column(String(100))
    outcome: Mapped[str | None] = mapped_column(String(40))  # the last call's failure reason
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Conversation(Base):
    """One project's number and one counterpart: the thread that texts AND calls between the
    two share. Calls join it by their from/to numbers; ``state`` is what the webhook returned
    as ``state`` last turn, echoed back as ``conversationState``."""

    __tablename__ = "conversations"
    __table_args__ = (
        Index("uq_conversations_pair", "project_id", "our_number", "their_number", unique=True),
        Index("ix_conversations_project", "project_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    number_id: Mapped[str | None] = mapped_column(ForeignKey("numbers.id", ondelete="SET NULL"))
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    our_number: Mapped[str] = mapped_column(String(20))
    their_number: Mapped[str] = mapped_column(String(20))
    state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    last_message_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """One text, either way. ``seq`` orders a conversation's messages as they arrived.

    ``work`` is the durable to-do flag: ``pending`` (an inbound text not yet answered, an
    outbound one not yet handed to its carrier), ``claimed`` (node ``claimed_by`` is on it
    since ``claimed_at``) or ``done``. A restart picks up what is not ``done``; a survivor
    takes a dead node's claims over."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_project", "project_id", "id"),
        Index("ix_messages_conversation", "conversation_id", "seq"),
        # A carrier's message ids are unique within one of its accounts, not across them.
        Index("uq_messages_carrier_id", "carrier_key", "carrier_message_id", unique=True),
        Index("ix_messages_work", "work", "claimed_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    number_id: Mapped[str | None] = mapped_column(ForeignKey("numbers.id", ondelete="SET NULL"))
    direction: Mapped[str] = mapped_column(String(10))  # inbound | outbound
    from_number: Mapped[str] = mapped_column(String(20))
    to_number: Mapped[str] = mapped_column(String(20))
    text: Mapped[str] = mapped_column(Text)
    media: Mapped[list[Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12))  # received | queued | sent | delivered | failed
    provider: Mapped[str] = mapped_column(String(20))
    carrier_key: Mapped[str | None] = mapped_column(String(120))  # the number's, at the time
    carrier_message_id: Mapped[str | None] = mapped_column(String(100))
    in_reply_to: Mapped[str | None] = mapped_column(String(40))
    # The carrier already answered this opt-out keyword itself (Twilio's Advanced Opt-Out).
    keyword_handled: Mapped[bool] = mapped_column(default=False)
    segments: Mapped[int] = mapped_column(Integer, default=1)
    encoding: Mapped[str] = mapped_column(String(8), default="gsm7")  # gsm7 | ucs2
    error_code: Mapped[str | None] = mapped_column(String(60))
    error_message: Mapped[str | None] = mapped_column(Text)
    work: Mapped[str] = mapped_column(String(10), default="done")  # pending | claimed | done
    claimed_at: Mapped[datetime | None] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()
    delivered_at: Mapped[datetime | None] = mapped_column()


class MessageEvent(Base):
    """A text's log: what the relay did with it and what went wrong (webhook failures,
    keywords, fallbacks, carrier errors), in order."""

    __tablename__ = "message_events"
    __table_args__ = (Index("ix_message_events_message", "message_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    level: Mapped[str] = mapped_column(String(10))  # info | warning | error
    code: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OptOut(Base):
    """A number on the project's do-not-contact list: it texted STOP (or another opt-out
    keyword) to one of the project's numbers (``listed_by`` ``recipient``), or the project
    listed it (``project``: ``/v1/dnc``, one by one or from a CSV). While ``opted_in_at`` is
    empty, no text or call of the project may reach it. START lifts only what STOP listed."""

    __tablename__ = "opt_outs"
    __table_args__ = (Index("uq_opt_outs_number", "project_id", "phone_number", unique=True),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    phone_number: Mapped[str] = mapped_column(String(20))
    our_number: Mapped[str | None] = mapped_column(String(20))
    keyword: Mapped[str | None] = mapped_column(String(20))
    opted_out_at: Mapped[datetime] = mapped_column(default=utcnow)
    opted_in_at: Mapped[datetime | None] = mapped_column()
    listed_by: Mapped[str] = mapped_column(
        String(10), default="recipient", server_default="recipient"
    )
    reason: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(100))


class IdempotencyKey(Base):
    """A POST sent with an ``Idempotency-Key``: while it runs (``status`` empty), then its
    answer, replayed to a retry with the same key for 24 hours (:mod:`relay.api.idempotency`)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created", "created_at"),)

    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the key sent
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(500))
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of method, path and body
    status: Mapped[int | None] = mapped_column(Integer)
    content_type: Mapped[str | None] = mapped_column(String(100))
    body: Mapped[str | None] = mapped_column(Text)  # sealed: relay.api.idempotency.seal
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
