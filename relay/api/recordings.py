"""``/v1/calls/{id}/recording`` and the signed download it hands out.

The download URL is ``/v1/recordings/{call_id}?token=...``: no API key, a token signed with
the relay's key (``RELAY_SIGNING_SECRET``) for that one call, good for one hour. Anything
wrong with the token answers 403 (``recording_token_expired`` when its hour is up,
``invalid_recording_token`` otherwise); a recording that is not (or no longer) there, 404
``recording_not_found``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from aiohttp import web
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relay import tokens
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, OutModel
from relay.calls import recordings
from relay.calls.lifecycle import LIVE
from relay.errors import Forbidden, NotFound
from relay.state import AppState
from relay.store.models import Call, Project, Recording, utcnow

router = Router()
TAG = "Calls"
TOKEN_PURPOSE = "recording"
URL_TTL_SECONDS = 3600
NEVER_CONNECTED = (
    "Nothing was recorded: the call never reached the voice engine, or the recording could "
    "not start (see the call's events)."
)
TOKEN_REFUSED = "The recording link is invalid: {why}."
TOKEN_EXPIRED = "The recording link has expired; get a new one from GET /v1/calls/{id}/recording."
NOT_THERE = "This call has no recording to download (status: {status})."

Status = Literal["disabled", "pending", "ready", "failed", "expired"]


class RecordingOut(OutModel):
    status: Status = Field(
        description="disabled: the agent does not record; pending: the call runs or its file "
        "is being encoded; ready; failed (see error); expired: deleted after the project's "
        "retention."
    )
    format: str | None = Field(
        default=None, description="`audio/ogg` (Opus), stereo: agent left, caller right."
    )
    duration_seconds: float | None = None
    size_bytes: int | None = None
    url: str | None = Field(
        default=None, description="Signed download URL (no API key needed); expires in 1 h."
    )
    url_expires_at: datetime | None = None
    retained_until: datetime | None = Field(
        default=None, description="When the retention purge deletes it."
    )
    error: str | None = None
    created_at: datetime | None = None
    ready_at: datetime | None = None


class DownloadQuery(APIModel):
    token: str | None = Field(
        default=None, max_length=500, pattern=r"^[A-Za-z0-9_.-]*$", description="From `url`."
    )


def signed_url(state: AppState, call_id: str) -> tuple[str, datetime]:
    token = tokens.issue(state.signing_key, call_id, TOKEN_PURPOSE, URL_TTL_SECONDS)
    base = state.settings.effective_public_url()
    return f"{base}/v1/recordings/{call_id}?token={token}", utcnow() + timedelta(
        seconds=URL_TTL_SECONDS
    )


async def recording_out(state: AppState, session: AsyncSession, call: Call) -> RecordingOut:
    """The call's recording as the API shows it (a fresh signed URL when it is ready)."""
    row = await session.get(Recording, call.id)
    if row is None:
        if not (call.agent_snapshot or {}).get("recording_enabled"):
            return RecordingOut(status="disabled")
        if call.status in LIVE:
            return RecordingOut(status="pending")
        return RecordingOut(status="failed", error=NEVER_CONNECTED)
    days = await session.scalar(
        select(Project.recording_retention_days).where(Project.id == row.project_id)
    )
    out = RecordingOut(
        status=row.status,
        format="audio/ogg",
        duration_seconds=row.duration_ms / 1000 if row.duration_ms is not None else None,
        size_bytes=row.size_bytes,
        error=row.error,
        created_at=row.created_at,
        ready_at=row.ready_at,
        retained_until=row.created_at + timedelta(days=days or recordings.DEFAULT_RETENTION_DAYS),
    )
    if row.status == recordings.READY:
        out.url, out.url_expires_at = signed_url(state, call.id)
    return out


@router.route(
    "GET",
    "/v1/calls/{call_id}/recording",
    summary="Get a call's recording",
    tag=TAG,
    response=RecordingOut,
    errors=(401, 403, 404, 429),
)
async def get_recording(ctx: Context) -> RecordingOut:
    """Status, duration and size, and when it is ``ready`` a signed ``url`` good for one
    hour (ask again for a fresh one). Stereo OGG/Opus: the agent on the left channel, the
    caller on the right, each where it was heard, so barge-in overlaps are kept."""
    call_id = ctx.path("call_id")
    async with ctx.state.db.session() as session:
        call: Call | None = await session.scalar(
            select(Call).where(Call.id == call_id, Call.project_id == ctx.project_id)
        )
        if call is None:
            raise NotFound(f"No call {call_id!r} in this project.")
        return await recording_out(ctx.state, session, call)


@router.route(
    "GET",
    "/v1/recordings/{call_id}",
    summary="Download a recording (signed URL)",
    tag=TAG,
    auth="none",
    query=DownloadQuery,
    media_type="audio/ogg",
    errors=(403, 404, 422),
)
async def download_recording(ctx: Context, query: DownloadQuery) -> web.StreamResponse:
    """The URL ``GET /v1/calls/{id}/recording`` hands out; the token is the credential.
    403 ``recording_token_expired`` after its hour, ``invalid_recording_token`` for any
    other fault; 404 ``recording_not_found`` when there is no file (any more)."""
    call_id = ctx.path("call_id")
    try:
        subject = tokens.verify(ctx.state.signing_key, query.token or "", TOKEN_PURPOSE)
    except tokens.TokenExpired as exc:
        raise Forbidden(TOKEN_EXPIRED, code="recording_token_expired") from exc
    except tokens.TokenError as exc:
        why = str(exc) if query.token else "no token"
        raise Forbidden(TOKEN_REFUSED.format(why=why), code="invalid_recording_token") from exc
    if subject != call_id:
        raise Forbidden(
            TOKEN_REFUSED.format(why="it is for another call"), code="invalid_recording_token"
        )
    async with ctx.state.db.session() as session:
        row = await session.get(Recording, call_id)
    path = recordings.absolute(ctx.state.settings, row) if row is not None else None
    if row is None or row.status != recordings.READY or path is None or not path.is_file():
        status = row.status if row is not None else "none"
        raise NotFound(NOT_THERE.format(status=status), code="recording_not_found")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "audio/ogg",
            "Content-Disposition": f'inline; filename="{call_id}.ogg"',
            "Cache-Control": "private, no-store",
        },
    )
