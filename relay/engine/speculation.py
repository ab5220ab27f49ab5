"""A speculative turn: the brain starts on the early transcript, before endpointing confirms
that the caller's turn is over.

The early recognizer (:mod:`relay.engine.speech.early`) has the transcript as soon as the
caller first falls silent; endpointing confirms the turn only after the full silence. A
:class:`Speculation` runs the brain's reply in between and keeps its chunks. If the turn is
confirmed with the same words, the session speaks the kept chunks (and those still coming)
as the turn's reply: no second request. If the caller speaks again first, the speculation
is withdrawn: its request is abandoned (closing the reply aborts a webhook request, or
stops the hosted LLM), nothing of it is spoken or stored, and the next ``agent.message``
says which turn it ``supersedes``.

The first words of the reply are synthesized while the turn is unconfirmed (``on_words``,
:meth:`relay.engine.speaking.Speaker.prefetch`), so a confirmed turn starts speaking at once.
Side effects wait: the request's ``confirmed`` event is set only when the turn is confirmed,
and the hosted brain calls no tool before it (a webhook is told with ``speculative: true``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable

from relay.engine.webhook import TurnRecord
from relay.turns import Brain, Chunk, TurnRequest


def same_words(a: str, b: str) -> bool:
    """Do two transcripts say the same thing (spacing aside)?"""
    return " ".join(a.split()) == " ".join(b.split())


class Speculation:
    """One early reply: its chunks as they come, kept until the turn is confirmed or not."""

    def __init__(
        self,
        brain: Brain,
        request: TurnRequest,
        turn: TurnRecord,
        text: str,
        on_words: Callable[[str], None] | None = None,
    ) -> None:
        self.brain = brain
        self.on_words = on_words  # the reply's first text, as soon as it comes
        self.request = request
        self.turn = turn
        self.text = text
        self.chunks: list[Chunk] = []
        self.done = False
        self.error: BaseException | None = None
        self._more = asyncio.Event()
        request.confirmed = asyncio.Event()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async with contextlib.aclosing(self.brain.reply(self.request)) as chunks:
                async for chunk in chunks:
                    if chunk.text and self.on_words is not None:
                        self.on_words(chunk.text)
                        self.on_words = None
                    self.chunks.append(chunk)
                    self._more.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # raised again to the turn that takes this reply
            self.error = exc
        finally:
            self.done = True
            self._more.set()

    async def replay(self) -> AsyncGenerator[Chunk, None]:
        """The reply as the confirmed turn's: kept chunks first, then the rest as it comes.
        Closing it early (barge-in) abandons the request, as closing a brain's reply does."""
        assert self.request.confirmed is not None
        self.request.confirmed.set()
        index = 0
        try:
            while True:
                if index < len(self.chunks):
                    index += 1
                    yield self.chunks[index - 1]
                    continue
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                self._more.clear()
                await self._more.wait()
        finally:
            if not self.done:
                await self.cancel()

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def withdraw(self) -> None:
        """The caller went on: abandon the request (in the background) and forget it."""
        self._task.cancel()
        self.brain.forget(self.request)


__all__ = ["Speculation", "same_words"]
