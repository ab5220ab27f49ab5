"""Timestamps as the relay's payloads write them: ISO 8601 in UTC with a ``Z``
(``2026-11-21T10:30:00.123Z``), milliseconds unless a caller asks for more.

One function for every payload (``agent.message`` for voice and SMS, lifecycle webhooks), so
a receiver parses one format. A leaf: it imports nothing from the relay.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime

__all__ = ["iso"]


def iso(moment: datetime | float | None = None, *, timespec: str = "milliseconds") -> str:
    """``moment`` as ISO 8601 in UTC: a datetime (a naive one is local time, as
    :meth:`datetime.astimezone` reads it), seconds since the epoch, or now when None."""
    if isinstance(moment, datetime):
        if timespec == "milliseconds":
            return _iso_ms(moment)
        at = moment.astimezone(UTC)
    else:
        at = datetime.fromtimestamp(time.time() if moment is None else moment, UTC)
    return at.isoformat(timespec=timespec).replace("+00:00", "Z")


# Kept: every text's recentHistory formats the same last texts' times again.
@functools.lru_cache(maxsize=4096)
def _iso_ms(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
