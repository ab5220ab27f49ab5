"""What a call freezes of its agent when it is created: a later PATCH changes new calls only.

One function, used by every way an outbound call is made (``POST /v1/calls`` and the
dialling queue's batch recipients), so ``{{variables.*}}`` fill the same way everywhere.
"""

from __future__ import annotations

from typing import Any

from hosted_llm.templates import render as render_template
from relay.calls.inbound import TRANSPORT_KEY
from relay.calls.intelligence import OVERRIDE_KEY as POST_CALL_KEY

TEMPLATED = ("greeting", "system_prompt")


def freeze(
    base: dict[str, Any],
    variables: dict[str, Any],
    sample_rate: int | None = None,
    post_call: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``base`` (the agent's settings) with ``{{variables.x}}`` filled in the greeting and
    system prompt, the variables, the media's sample rate, and the call's own ``postCall``
    override (only the keys it was sent with)."""
    out = dict(base)
    for key in TEMPLATED:
        out[key] = render_template(out.get(key), {"variables": variables})
    out["variables"] = dict(variables)
    if sample_rate is not None:
        out[TRANSPORT_KEY] = {"sample_rate": sample_rate}
    if post_call is not None:
        out[POST_CALL_KEY] = post_call
    return out


__all__ = ["TEMPLATED", "freeze"]
