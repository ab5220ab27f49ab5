"""``/v1/nodes``: the relay processes serving this deployment, for its operators.

Nodes are the deployment's, not a project's: only a secret key of a project named in
``RELAY_ADMIN_PROJECTS`` may list them (by default no project may; ``relay nodes`` reads
the same from the database). Other keys get 403 ``admin_only``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from relay.api.routing import Context, Router
from relay.api.schema import OutModel
from relay.calls.nodes import node_statuses
from relay.errors import Forbidden
from relay.store.models import Project

router = Router()
TAG = "Nodes"
ADMIN_ONLY = (
    "Only keys of the deployment's admin projects (RELAY_ADMIN_PROJECTS) may list its nodes."
)


class NodeOut(OutModel):
    id: str = Field(description="RELAY_NODE_ID, or hostname:port (then /worker with --workers).")
    object: Literal["node"] = "node"
    alive: bool = Field(description="Its heartbeat is younger than RELAY_NODE_TIMEOUT_SECONDS.")
    started_at: datetime
    heartbeat_at: datetime
    live_calls: int = Field(description="Calls it runs now (dialling, or media connected).")


class NodeList(OutModel):
    object: Literal["list"] = "list"
    data: list[NodeOut]


@router.route(
    "GET",
    "/v1/nodes",
    summary="List the relay's nodes",
    tag=TAG,
    response=NodeList,
    errors=(401, 403, 429),
)
async def list_nodes(ctx: Context) -> NodeList:
    """The deployment's relay processes, alive or not yet taken over, with their load."""
    settings = ctx.state.settings
    async with ctx.state.db.session() as session:
        project = await session.get(Project, ctx.project_id)
        if project is None or project.name not in settings.admin_project_names():
            raise Forbidden(ADMIN_ONLY, code="admin_only")
        nodes = await node_statuses(session, settings.node_timeout_seconds)
    return NodeList(
        data=[
            NodeOut(
                id=n.id,
                alive=n.alive,
                started_at=n.started_at,
                heartbeat_at=n.heartbeat_at,
                live_calls=n.live_calls,
            )
            for n in nodes
        ]
    )
