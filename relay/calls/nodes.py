"""What the deployment's nodes are doing: who is alive, since when, how many calls each runs.

One reader for ``GET /v1/nodes`` and ``relay nodes``. A node is alive while its heartbeat
is younger than ``RELAY_NODE_TIMEOUT_SECONDS``; a dead one stays listed until a survivor
takes it over (:meth:`relay.calls.recovery.Recovery.bury`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.store.models import CallLease, RelayNode, utcnow


@dataclass(frozen=True, slots=True)
class NodeStatus:
    id: str
    alive: bool
    started_at: datetime
    heartbeat_at: datetime
    live_calls: int


async def node_statuses(session: AsyncSession, node_timeout: float) -> list[NodeStatus]:
    """Every node with a heartbeat row, by id, with the calls it holds."""
    since = utcnow() - timedelta(seconds=node_timeout)
    counts = await session.execute(
        select(CallLease.node_id, func.count()).group_by(CallLease.node_id)
    )
    held: dict[str, int] = {node: count for node, count in counts}
    rows = await session.execute(select(RelayNode).order_by(RelayNode.id))
    return [
        NodeStatus(
            id=node.id,
            alive=node.heartbeat_at >= since,
            started_at=node.started_at,
            heartbeat_at=node.heartbeat_at,
            live_calls=held.get(node.id, 0),
        )
        for node in rows.scalars()
    ]


__all__ = ["NodeStatus", "node_statuses"]
