"""Calling hours at fixed clock times: the callee's local time from the number, every zone
of a number that spans several, weekends and public holidays, and the next legal moment."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from relay.calling_hours import decide

NEW_YORK = "+12125550142"
LOS_ANGELES = "+13105550142"
SYDNEY = "+61255509999"  # a Sydney landline: one zone
AU_MOBILE = "+61412345678"  # a mobile: every Australian zone
LONDON = "+442079460000"
TCPA = {"preset": "us_tcpa"}
AU = {"preset": "au_telemarketing"}


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "allowed"),
    [
        (at(2026, 12, 7, 12, 59), False),  # 07:59 in New York (EST, UTC-5)
        (at(2026, 12, 7, 13, 0), True),  # 08:00
        (at(2026, 12, 8, 1, 59), True),  # 20:59
        (at(2026, 12, 8, 2, 0), False),  # 21:00
        (at(2026, 7, 7, 12, 0), True),  # 08:00 in summer (EDT, UTC-4)
    ],
)
def test_tcpa_hours_are_the_callees_local_time(moment, allowed):
    verdict = decide(TCPA, NEW_YORK, moment)
    assert verdict.allowed is allowed
    assert verdict.time_zones == ("America/New_York",)
    if not allowed:
        assert verdict.reason == "outside_calling_hours"


def test_the_same_moment_is_legal_in_one_zone_and_not_in_another():
    moment = at(2026, 12, 7, 15, 0)  # 10:00 in New York, 07:00 in Los Angeles
    assert decide(TCPA, NEW_YORK, moment).allowed
    blocked = decide(TCPA, LOS_ANGELES, moment)
    assert not blocked.allowed
    assert blocked.next_allowed_at == at(2026, 12, 7, 16, 0)  # 08:00 in Los Angeles


def test_a_number_spanning_several_zones_is_called_only_when_all_are_open():
    # Tuesday 2026-12-08 22:30 UTC: 09:30 in Sydney, 06:30 in Perth.
    moment = at(2026, 12, 8, 22, 30)
    assert decide(AU, SYDNEY, moment).allowed
    mobile = decide(AU, AU_MOBILE, moment)
    assert not mobile.allowed
    assert "Australia/Perth" in mobile.time_zones and len(mobile.time_zones) > 3
    # The first moment every zone is open: 09:00 in the last zone to open (the Cocos
    # Islands, UTC+6:30), which is 13:30 in Sydney.
    assert mobile.next_allowed_at == at(2026, 12, 9, 2, 30)
    assert decide(AU, AU_MOBILE, mobile.next_allowed_at).allowed


@pytest.mark.parametrize(
    ("moment", "allowed"),
    [
        (at(2026, 12, 12, 5, 59), True),  # Saturday 16:59 in Sydney (AEDT, UTC+11)
        (at(2026, 12, 12, 6, 0), False),  # Saturday 17:00
        (at(2026, 12, 12, 23, 0), False),  # Sunday 10:00
        (at(2026, 12, 13, 22, 0), True),  # Monday 09:00
        (at(2026, 12, 14, 8, 59), True),  # Monday 19:59
        (at(2026, 12, 14, 9, 0), False),  # Monday 20:00
    ],
)
def test_australian_telemarketing_hours_and_the_weekend(moment, allowed):
    assert decide(AU, SYDNEY, moment).allowed is allowed


def test_no_calls_on_an_australian_national_public_holiday():
    australia_day = at(2027, 1, 25, 23, 0)  # Tuesday 26 January 2027, 10:00 in Sydney
    verdict = decide(AU, SYDNEY, australia_day)
    assert (verdict.allowed, verdict.reason) == (False, "public_holiday")
    assert verdict.next_allowed_at == at(2027, 1, 26, 22, 0)  # Wednesday 09:00 in Sydney
    assert decide(AU, SYDNEY, at(2027, 1, 26, 23, 0)).allowed  # the day after, 10:00


def test_by_country_applies_the_callees_countrys_preset():
    policy = {"preset": "by_country"}
    night_in_new_york = at(2026, 12, 8, 4, 0)
    assert decide(policy, NEW_YORK, night_in_new_york).policy == "us_tcpa"
    assert not decide(policy, NEW_YORK, night_in_new_york).allowed
    assert decide(policy, SYDNEY, at(2026, 12, 13, 0, 0)).policy == "au_telemarketing"
    london = decide(policy, LONDON, at(2026, 12, 8, 3, 0))
    assert (london.allowed, london.policy) == (True, "none")


def test_custom_windows_with_public_holidays_off():
    policy = {
        "windows": [
            {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "10:00", "end": "24:00"}
        ],
        "no_public_holidays": True,
    }
    assert decide(policy, LONDON, at(2026, 12, 7, 23, 59)).allowed  # Monday 23:59 in London
    assert not decide(policy, LONDON, at(2026, 12, 7, 9, 59)).allowed
    christmas = decide(policy, LONDON, at(2026, 12, 25, 12, 0))
    assert christmas.reason == "public_holiday"
    # Boxing Day is observed on Monday 28 December in 2026; the 29th is the next window.
    assert christmas.next_allowed_at == at(2026, 12, 29, 10, 0)


def test_no_policy_and_none_allow_every_moment():
    for policy in (None, {"preset": "none"}):
        assert decide(policy, NEW_YORK, at(2026, 12, 8, 7, 0)).allowed


def test_a_number_whose_local_time_cannot_be_told_is_not_called_under_a_policy():
    freephone = "+80012345678"  # international freephone: no zone
    verdict = decide(TCPA, freephone, at(2026, 12, 7, 15, 0))
    assert (verdict.allowed, verdict.reason) == (False, "unknown_time_zone")
    assert decide(None, freephone, at(2026, 12, 7, 15, 0)).allowed
