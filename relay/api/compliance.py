"""Calling hours as the API takes them, and ``GET /v1/compliance/check``: what would happen
if the project called a number now, and why.

A policy is set on the project (``PATCH /v1/project {callingHours}``) and may be overridden
per agent (``callingHours`` on the agent); :mod:`relay.calling_hours` decides. The dialler
applies it to every outbound call before the carrier is asked (a call outside the hours ends
``failed`` / ``compliance_block``, its event log saying why and when the next window opens).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from relay import calling_hours
from relay.api.routing import Context, Router
from relay.api.schema import APIModel, OutModel
from relay.errors import NotFound
from relay.phone import query_e164
from relay.store.models import Agent, Project
from sms import dnc
from sms.optout import LISTED_BY_PROJECT

router = Router()
TAG = "Compliance"
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Preset = Literal["none", "us_tcpa", "au_telemarketing", "by_country"]
ONE_OF = "callingHours takes either a preset or windows."
HOLIDAYS_WITH_WINDOWS = "noPublicHolidays goes with windows; a preset sets its own."
START_BEFORE_END = "A window must start before it ends."


class HoursWindow(APIModel):
    days: list[Day] = Field(min_length=1, max_length=7)
    start: str = Field(pattern=calling_hours.HHMM.pattern, description="HH:MM, callee local time.")
    end: str = Field(pattern=calling_hours.HHMM.pattern, description="HH:MM (24:00: midnight).")

    @model_validator(mode="after")
    def _ordered(self) -> HoursWindow:
        if calling_hours.clock(self.start) >= calling_hours.clock(self.end):
            raise ValueError(START_BEFORE_END)
        self.days = list(dict.fromkeys(self.days))
        return self


class CallingHours(APIModel):
    """A preset, or weekly windows in the callee's local time."""

    preset: Preset | None = Field(
        default=None,
        description=(
            "`us_tcpa` (08:00-21:00 every day), `au_telemarketing` (Mon-Fri 09:00-20:00, "
            "Sat 09:00-17:00, no Sundays or national public holidays), `by_country` (those two "
            "for US/Canadian and Australian numbers, no limit elsewhere), `none`."
        ),
    )
    windows: list[HoursWindow] | None = Field(
        default=None, min_length=1, max_length=calling_hours.MAX_WINDOWS
    )
    no_public_holidays: bool | None = Field(
        default=None, description="With windows: no calls on the callee country's holidays."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> CallingHours:
        if (self.preset is None) == (self.windows is None):
            raise ValueError(ONE_OF)
        if self.preset is not None and self.no_public_holidays is not None:
            raise ValueError(HOLIDAYS_WITH_WINDOWS)
        return self


class CallingHoursOut(OutModel):
    preset: Preset | None = None
    windows: list[dict[str, Any]] | None = None
    no_public_holidays: bool | None = None


def hours_out(stored: dict[str, Any] | None) -> CallingHoursOut | None:
    return None if stored is None else CallingHoursOut(**stored)


class CheckQuery(APIModel):
    to: str = Field(max_length=40, description="The number to call (E.164).")
    agent_id: str | None = Field(
        default=None, max_length=60, description="Apply this agent's calling hours."
    )


class HoursCheck(OutModel):
    allowed: bool
    policy: str
    reason: str | None
    message: str | None
    time_zones: list[str]
    local_times: dict[str, str]
    next_allowed_at: datetime | None


class ComplianceCheck(OutModel):
    object: Literal["compliance_check"] = "compliance_check"
    to: str
    allowed: bool = Field(description="Whether a call placed now would be dialled.")
    blocked_by: list[str] = Field(
        description="`opted_out` (texted STOP), `dnc_conflict`, `outside_calling_hours`, "
        "`public_holiday`, `unknown_time_zone`."
    )
    calling_hours: HoursCheck


@router.route(
    "GET",
    "/v1/compliance/check",
    summary="Check whether a number may be called now",
    tag=TAG,
    query=CheckQuery,
    response=ComplianceCheck,
    errors=(401, 403, 404, 422, 429),
)
async def check(ctx: Context, query: CheckQuery) -> ComplianceCheck:
    """What the relay would do with a call to ``to`` placed now: the do-not-contact list, the
    STOP opt-outs and the calling hours (the agent's, else the project's), with the callee's
    local time and, when outside the hours, when the next window opens."""
    to = query_e164(query.to, field="to")
    async with ctx.state.db.session() as session:
        project = await session.get(Project, ctx.project_id)
        if project is None:
            raise NotFound("This project no longer exists.")
        agent_hours = None
        if query.agent_id is not None:
            agent = await session.get(Agent, query.agent_id)
            if agent is None or agent.project_id != ctx.project_id or agent.deleted_at:
                raise NotFound(f"No agent {query.agent_id!r} in this project.")
            agent_hours = agent.config.get("calling_hours")
        listed = await dnc.entry(session, ctx.project_id, to)
    policy = calling_hours.effective(project.calling_hours, agent_hours)
    verdict = calling_hours.decide(policy, to, datetime.now(UTC))
    blocked = []
    if listed is not None:
        blocked.append("dnc_conflict" if listed.listed_by == LISTED_BY_PROJECT else "opted_out")
    if not verdict.allowed and verdict.reason is not None:
        blocked.append(verdict.reason)
    return ComplianceCheck(
        to=to,
        allowed=not blocked,
        blocked_by=blocked,
        calling_hours=HoursCheck(
            allowed=verdict.allowed,
            policy=verdict.policy,
            reason=verdict.reason,
            message=verdict.message,
            time_zones=list(verdict.time_zones),
            local_times=verdict.local_times,
            next_allowed_at=verdict.next_allowed_at,
        ),
    )
