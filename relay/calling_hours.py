"""Calling hours: when a number may be called, by the callee's local time.

A policy is a preset or a set of weekly windows, optionally with no calls on the callee's
country's national public holidays. The callee's time zones come from the number
(``phonenumbers``); a number that spans several zones may be called only when every one of
them is inside a window, and a number whose zone cannot be told is not called under a
policy at all (it fails closed).

Presets:

    us_tcpa            every day 08:00-21:00 (the TCPA's hours, callee local time)
    au_telemarketing   Mon-Fri 09:00-20:00, Sat 09:00-17:00; not on Sundays or on Australia's
                       national public holidays (ACMA's telemarketing standard)
    by_country         us_tcpa for +1 numbers of the US and Canada, au_telemarketing for
                       Australian numbers, no limit elsewhere
    none               no limit (the default)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import phonenumbers
from phonenumbers import timezone as number_zones

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PRESETS = ("none", "us_tcpa", "au_telemarketing", "by_country")
HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")
# How far ahead the next legal moment is looked for: a week and a holiday weekend.
_HORIZON_DAYS = 10
MAX_WINDOWS = 21


@dataclass(frozen=True, slots=True)
class Window:
    days: tuple[Day, ...]
    start: time
    end: time  # exclusive; time.max for 24:00

    def covers(self, local: datetime) -> bool:
        return DAYS[local.weekday()] in self.days and self.start <= local.time() < self.end


@dataclass(frozen=True, slots=True)
class Policy:
    """Weekly windows and whether national public holidays are off."""

    windows: tuple[Window, ...] = ()
    no_public_holidays: bool = False
    unlimited: bool = False
    name: str = "custom"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    policy: str
    time_zones: tuple[str, ...] = ()
    local_times: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # why not: outside_calling_hours, public_holiday, unknown_time_zone
    message: str | None = None
    next_allowed_at: datetime | None = None


US_TCPA = Policy((Window(DAYS, time(8), time(21)),), name="us_tcpa")
AU_TELEMARKETING = Policy(
    (
        Window(("mon", "tue", "wed", "thu", "fri"), time(9), time(20)),
        Window(("sat",), time(9), time(17)),
    ),
    no_public_holidays=True,
    name="au_telemarketing",
)
UNLIMITED = Policy(unlimited=True, name="none")


def clock(value: str) -> time:
    """``HH:MM`` (00:00-24:00) as a time of day; 24:00 is the end of the day."""
    if not HHMM.match(value):
        raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00-24:00).")
    if value == "24:00":
        return time.max
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def policy_for(stored: dict[str, Any] | None, region: str) -> Policy:
    """The policy to apply to a callee in ``region`` (ISO country code). ``stored`` is the
    policy as agents and projects keep it: ``{"preset": name}``, or ``{"windows": [{"days",
    "start", "end"}], "no_public_holidays": bool}``."""
    if not stored:
        return UNLIMITED
    preset = stored.get("preset")
    if preset == "us_tcpa":
        return US_TCPA
    if preset == "au_telemarketing":
        return AU_TELEMARKETING
    if preset == "by_country":
        if region in ("US", "CA"):
            return US_TCPA
        return AU_TELEMARKETING if region == "AU" else UNLIMITED
    if preset == "none":
        return UNLIMITED
    windows = tuple(
        Window(tuple(w["days"]), clock(w["start"]), clock(w["end"]))
        for w in stored.get("windows") or ()
    )
    return Policy(windows, bool(stored.get("no_public_holidays")))


def effective(
    project: dict[str, Any] | None, agent: dict[str, Any] | None
) -> dict[str, Any] | None:
    """An agent's own policy, else its project's."""
    return agent if agent is not None else project


@lru_cache(maxsize=64)
def _holidays(region: str, year: int) -> holidays.HolidayBase | None:
    try:
        return holidays.country_holidays(region, years=year)
    except NotImplementedError:
        return None


def _zones(number: phonenumbers.PhoneNumber) -> tuple[ZoneInfo, ...]:
    found = []
    for name in number_zones.time_zones_for_number(number):
        try:
            found.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return tuple(found)


def _open_in(policy: Policy, zone: ZoneInfo, region: str, at: datetime) -> str | None:
    """None if ``at`` is inside the policy in ``zone``, else why not."""
    local = at.astimezone(zone)
    if policy.no_public_holidays:
        days_off = _holidays(region, local.year)
        if days_off is not None and local.date() in days_off:
            return "public_holiday"
    if not any(w.covers(local) for w in policy.windows):
        return "outside_calling_hours"
    return None


def _window_starts(policy: Policy, zones: tuple[ZoneInfo, ...], after: datetime) -> list[datetime]:
    """Every moment a window opens in one of ``zones`` over the horizon, in UTC, sorted."""
    starts = set()
    for zone in zones:
        first: date = after.astimezone(zone).date()
        for offset in range(_HORIZON_DAYS + 1):
            day = first + timedelta(days=offset)
            for window in policy.windows:
                if DAYS[day.weekday()] in window.days:
                    local = datetime.combine(day, window.start, tzinfo=zone)
                    starts.add(local.astimezone(UTC))
    return sorted(s for s in starts if s > after)


def decide(stored: dict[str, Any] | None, e164: str, now: datetime) -> Verdict:
    """May ``e164`` be called at ``now`` (aware) under the stored policy?"""
    if not stored:  # the default: every dial asks, so no number is parsed for it
        return Verdict(True, UNLIMITED.name)
    number = phonenumbers.parse(e164)
    region = phonenumbers.region_code_for_number(number) or "ZZ"
    policy = policy_for(stored, region)
    if policy.unlimited:
        return Verdict(True, policy.name)
    zones = _zones(number)
    names = tuple(z.key for z in zones)
    if not zones:
        return Verdict(
            False,
            policy.name,
            reason="unknown_time_zone",
            message=f"The local time of {e164} cannot be told, so calling hours cannot be kept.",
        )
    local_times = {z.key: now.astimezone(z).strftime("%a %H:%M") for z in zones}
    reasons = [r for z in zones if (r := _open_in(policy, z, region, now)) is not None]
    if not reasons:
        return Verdict(True, policy.name, names, local_times)
    reason = "public_holiday" if "public_holiday" in reasons else "outside_calling_hours"
    next_at = next(
        (
            start
            for start in _window_starts(policy, zones, now)
            if all(_open_in(policy, z, region, start) is None for z in zones)
        ),
        None,
    )
    shown = list(local_times.items())
    where = ", ".join(f"{v} in {k}" for k, v in shown[:3])
    where += f" and {len(shown) - 3} more zones" if len(shown) > 3 else ""
    message = (
        f"Outside the calling hours of the {policy.name} policy for {e164} ({where})"
        + (" on a public holiday" if reason == "public_holiday" else "")
        + "."
    )
    return Verdict(False, policy.name, names, local_times, reason, message, next_at)


__all__ = [
    "AU_TELEMARKETING",
    "DAYS",
    "HHMM",
    "MAX_WINDOWS",
    "PRESETS",
    "US_TCPA",
    "Verdict",
    "clock",
    "decide",
    "effective",
    "policy_for",
]
