"""The brain seam: whatever answers a turn, the developer's webhook or the built-in LLM.

A brain takes one ``agent.message`` turn and yields the reply's chunks as they come; the
caller (a voice call, an SMS conversation) does the same with them whoever answered.
Closing the iterator early (barge-in) abandons the turn. A speculative turn the caller
went on past is :meth:`Brain.forget`-ten: nothing of it may stay in the conversation.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

import aiohttp

from relay.turns.protocol import Chunk, TurnRequest, stream_turn


class Brain(Protocol):
    def reply(self, request: TurnRequest) -> AsyncGenerator[Chunk, None]:
        """The reply's chunks; raises :class:`~relay.turns.protocol.TurnError` on failure."""
        ...

    def start(self) -> None:
        """The conversation began (a brain may read its prompt ahead of the first turn)."""

    def forget(self, request: TurnRequest) -> None:
        """``request`` (the latest one) was speculative and is superseded: drop it."""

    async def aclose(self) -> None:
        """The conversation is over."""


class WebhookBrain:
    """The developer's webhook: one signed POST per turn (:func:`stream_turn`)."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self._http = http

    def reply(self, request: TurnRequest) -> AsyncGenerator[Chunk, None]:
        return stream_turn(self._http, request)

    def start(self) -> None:
        pass

    def forget(self, request: TurnRequest) -> None:
        pass  # the next request tells the webhook (``supersedes``)

    async def aclose(self) -> None:
        pass
