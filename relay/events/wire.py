"""One lifecycle webhook on the wire: the request, signed, and what its answer means.

A :class:`Job` is one attempt at one delivery; :func:`send` makes the request (Standard
Webhooks signature, the delivery's id as ``webhook-id``: the same on every attempt, so
receivers deduplicate on it) and returns its :class:`Outcome` without raising. A 2xx answer
within the timeout delivers; 410 Gone means the endpoint is gone; 429 and 503 honour
``Retry-After``. Anything else is retried on ``RELAY_WEBHOOK_RETRY_SCHEDULE`` with +-10%
jitter (:func:`next_delay`); after the last attempt the delivery fails.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp

from relay.egress import answer_summary, describe
from relay.events.emitting import AnyEvent
from relay.signing import Secrets, signature_headers
from relay.store.models import utcnow
from relay.timefmt import iso

USER_AGENT = "conversation-relay-webhooks/0.1"
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
JITTER = 0.1
# An error answer's body is read (never kept) to this size: enough to say how big it was.
ERROR_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Job:
    delivery_id: str
    endpoint_id: str
    attempt: int
    url: str
    secrets: Secrets
    body: str
    ordering_key: str | None = None

    @property
    def lane(self) -> tuple[str, str] | None:
        return None if self.ordering_key is None else (self.endpoint_id, self.ordering_key)


@dataclass(frozen=True, slots=True)
class Outcome:
    job: Job
    started_at: datetime
    latency_ms: int
    status_code: int | None
    error: str | None
    retry_after: float | None
    sent: bool = True  # False: its chain stopped before it; it was never attempted

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


def event_body(evt: AnyEvent) -> str:
    """What a receiver gets: the same bytes on every attempt."""
    return json.dumps(
        {
            "type": evt.type,
            "id": evt.id,
            "timestamp": iso(evt.created_at, timespec="microseconds"),
            "data": evt.data,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), MAX_RETRY_AFTER_SECONDS)


def next_delay(schedule: Sequence[float], attempts: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after ``attempts`` tries, or None when none is left."""
    if attempts >= len(schedule):
        return None
    if retry_after is not None:
        return retry_after
    base = schedule[attempts]
    return base * random.uniform(1 - JITTER, 1 + JITTER)


async def send(http: aiohttp.ClientSession, job: Job, limit_seconds: float) -> Outcome:
    headers = signature_headers(job.body, job.secrets.live(utcnow()), msg_id=job.delivery_id)
    headers["Content-Type"] = "application/json"
    headers["User-Agent"] = USER_AGENT
    started = utcnow()
    t0 = time.perf_counter()
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    size = 0
    try:
        async with http.post(
            job.url,
            data=job.body.encode(),
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=limit_seconds),
        ) as resp:
            status = resp.status
            if not 200 <= status < 300:
                if status in (429, 503):
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                async for piece in resp.content.iter_any():
                    size += len(piece)
                    if size > ERROR_BODY_BYTES:
                        break
    except TimeoutError:
        error = f"no answer within {limit_seconds:g} s"
    except aiohttp.ClientError as exc:
        error = describe(exc)
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    latency = round((time.perf_counter() - t0) * 1000)
    if status is not None and error is None and not 200 <= status < 300:
        more = size > ERROR_BODY_BYTES
        error = answer_summary(status, min(size, ERROR_BODY_BYTES), latency, more=more)
    return Outcome(job, started, latency, status, error, retry_after)


__all__ = [
    "Job",
    "Outcome",
    "event_body",
    "iso",
    "next_delay",
    "retry_after_seconds",
    "send",
]
