"""Template variables in system prompts and greetings."""

from __future__ import annotations

from hosted_llm import render_template

SCOPES = {
    "variables": {"firstName": "Ana", "vip": True, "count": 3},
    "user": {"phone": "+61412345678", "name": "Ana"},
    "call": {"from": "+61412345678", "to": "+61255501234", "id": "call_1"},
}


def test_every_scope_is_filled():
    text = (
        "Hi {{variables.firstName}} ({{ user.name }}), you called {{call.to}} from {{call.from}}."
    )
    assert render_template(text, SCOPES) == (
        "Hi Ana (Ana), you called +61255501234 from +61412345678."
    )


def test_values_are_written_plainly():
    assert render_template("{{variables.vip}} {{variables.count}}", SCOPES) == "true 3"


def test_unknown_names_stay_visible():
    text = "Dear {{variables.lastName}}, {{user.email}} {{other.x}}"
    assert render_template(text, SCOPES) == text


def test_nothing_to_fill():
    assert render_template(None, SCOPES) is None
    assert render_template("plain", SCOPES) == "plain"
