"""``/v1/project``: the settings of the project the API key belongs to.

How long call recordings are kept: ``recordingRetentionDays``, 30-365, default 90. A change
applies to recordings already stored too: the next purge (hourly,
``RELAY_RECORDING_PURGE_SECONDS``) deletes whatever is older than the new limit.

When outbound calls may ring: ``callingHours`` (:mod:`relay.api.compliance`), by the
callee's local time; an agent's own ``callingHours`` overrides it. Default: no limit.

How many outbound calls may be live at once: ``maxConcurrentCalls`` (the dialling queue,
:mod:`relay.calls.dial_queue`, keeps the rest waiting). Default: no cap.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncSession

from relay.api.compliance import CallingHours, CallingHoursOut, hours_out
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, OutModel
from relay.calls.recordings import RETENTION_DAYS
from relay.errors import NotFound
from relay.store.models import Project

router = Router()
TAG = "Project"


class ProjectOut(OutModel):
    id: str
    object: Literal["project"] = "project"
    name: str
    recording_retention_days: int
    calling_hours: CallingHoursOut | None
    max_concurrent_calls: int | None
    created_at: datetime


class ProjectUpdate(APIModel):
    recording_retention_days: int | None = Field(
        default=None,
        ge=RETENTION_DAYS[0],
        le=RETENTION_DAYS[1],
        description="Days a call recording is kept before it is deleted (30-365).",
    )
    calling_hours: CallingHours | None = Field(
        default=None,
        description="When outbound calls may ring, callee local time (null: no limit).",
    )
    max_concurrent_calls: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Outbound calls of the project live at once, at most (null: no cap).",
    )


def _out(project: Project) -> ProjectOut:
    return ProjectOut(
        id=project.id,
        name=project.name,
        recording_retention_days=project.recording_retention_days,
        calling_hours=hours_out(project.calling_hours),
        max_concurrent_calls=project.max_concurrent_calls,
        created_at=project.created_at,
    )


async def _load(ctx: Context, session: AsyncSession, *, lock: bool = False) -> Project:
    project = await session.get(Project, ctx.project_id, with_for_update=lock)
    if project is None:  # its key was just authenticated: only a deletion in between
        raise NotFound("This project no longer exists.")
    return project


@router.route(
    "GET",
    "/v1/project",
    summary="Get the project's settings",
    tag=TAG,
    response=ProjectOut,
    errors=(401, 403, 404, 429),
)
async def get_project(ctx: Context) -> ProjectOut:
    async with ctx.state.db.session() as session:
        return _out(await _load(ctx, session))


@router.route(
    "PATCH",
    "/v1/project",
    summary="Change the project's settings",
    tag=TAG,
    body=ProjectUpdate,
    response=ProjectOut,
    errors=(400, 401, 403, 404, 413, 415, 422, 429),
)
async def update_project(ctx: Context, body: ProjectUpdate) -> ProjectOut:
    """``recordingRetentionDays`` (30-365): recordings older than this are deleted by the
    next purge, those stored already included. ``callingHours``: when outbound calls may
    ring (``null``: no limit). ``maxConcurrentCalls``: outbound calls live at once (``null``:
    no cap)."""
    async with ctx.state.db.session() as session:
        project = await _load(ctx, session, lock=True)
        if body.recording_retention_days is not None:
            project.recording_retention_days = body.recording_retention_days
        if "calling_hours" in body.model_fields_set:
            hours = body.calling_hours
            project.calling_hours = None if hours is None else hours.model_dump(exclude_unset=True)
        if "max_concurrent_calls" in body.model_fields_set:
            project.max_concurrent_calls = body.max_concurrent_calls
        return _out(project)
