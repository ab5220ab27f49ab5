"""A call's event log: what happened on it, line by line, for the developer to read.

source   lifecycle | webhook | telephony | engine | post_call
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from relay.ids import new_id
from relay.store.models import CallEvent, utcnow


async def log_event(
    session: AsyncSession,
    call_id: str,
    source: str,
    message: str,
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    """Append to the call's event log (source: lifecycle|webhook|telephony|engine|post_call)."""
    session.add(
        CallEvent(
            id=new_id("cev"),
            call_id=call_id,
            level=level,
            source=source,
            message=message,
            data=data,
            created_at=utcnow(),
        )
    )
