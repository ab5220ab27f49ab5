"""The limits an agent sets on a call: how long the caller may stay silent, how long the
call may last.

Inactivity ``reprompt`` asks once ("Are you still there?"), then ends the call on the next
timeout; ``hangup`` ends at the first. Both end ``completed`` with an ``inactivity`` event.
``maxDurationSeconds`` ends the call ``completed`` with a ``max_duration`` event: the call
did not fail, it reached the limit its agent set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from relay.engine.ports import CallEnd, CallSink

REPROMPT = "Are you still there?"

End = Callable[[CallEnd], Awaitable[None]]


class Activity:
    """When the call last showed life (caller or agent speaking, keys pressed)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self.last


async def inactivity(
    limit: float,
    action: str,
    *,
    activity: Activity,
    busy: Callable[[], bool],
    ending: Callable[[], bool],
    reprompt: Callable[[str], object],
    sink: CallSink,
    end: End,
) -> None:
    """Watch for ``limit`` seconds without activity while nothing is ``busy``."""
    reprompted = False
    while not ending():
        await asyncio.sleep(min(0.25, limit / 4))
        if busy():
            activity.touch()
            continue
        if activity.idle_for() < limit:
            continue
        if action == "reprompt" and not reprompted:
            reprompted = True
            sink.event("engine", "caller inactive: reprompting")
            reprompt(REPROMPT)
            activity.touch()
            continue
        await end(
            CallEnd(
                "completed",
                detail=f"no caller activity for {limit:g} s",
                data={"reason": "inactivity"},
            )
        )
        return


async def max_duration(seconds: float, end: End) -> None:
    await asyncio.sleep(seconds)
    await end(
        CallEnd(
            "completed",
            detail=f"max_duration: the call reached {seconds:g} s",
            data={"reason": "max_duration"},
        )
    )
