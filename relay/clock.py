"""Timestamps as the API and the turn protocol write them: ISO 8601, UTC, milliseconds, ``Z``."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso(moment: datetime | float | None = None) -> str:
    """``2026-11-21T10:30:00.123Z`` for a datetime, a Unix time, or now."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment if moment is not None else time.time(), UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
