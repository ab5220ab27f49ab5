"""One worker per conversation: texts of one conversation one at a time, conversations in
parallel.

Work reaches a conversation's worker two ways: ``push`` hands it a message its caller has
stored AND claimed already (saving the worker a round trip to claim it), ``notify`` says
there may be pending work in the store to claim. Exactly one task drains a conversation at a
time; what arrives while it is busy is drained by the same task right after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from relay.logs import get_logger

log = get_logger("sms.queue")

T = TypeVar("T")
# drain(conversation_id, pushed items in push order, whether to claim pending work too)
Drain = Callable[[str, list[T], bool], Awaitable[None]]


class ConversationQueues(Generic[T]):
    def __init__(self, drain: Drain[T], *, max_parallel: int = 256) -> None:
        self._drain = drain
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._pushed: dict[str, list[T]] = {}
        self._look: set[str] = set()
        self._slots = asyncio.Semaphore(max_parallel)
        self._closed = False

    def push(self, conversation_id: str, item: T) -> None:
        """A claimed item for this conversation, to be drained after what came before it."""
        if not self._closed:
            self._pushed.setdefault(conversation_id, []).append(item)
            self._start(conversation_id)

    def notify(self, conversation_id: str) -> None:
        """There is (or may be) pending work in the store for this conversation."""
        if not self._closed:
            self._look.add(conversation_id)
            self._start(conversation_id)

    def _start(self, conversation_id: str) -> None:
        if conversation_id not in self._tasks:
            self._tasks[conversation_id] = asyncio.create_task(
                self._run(conversation_id), name=f"sms:{conversation_id}"
            )

    def idle_for(self, conversation_id: str) -> bool:
        """Whether nothing is queued or running for this conversation."""
        return (
            conversation_id not in self._tasks
            and conversation_id not in self._pushed
            and conversation_id not in self._look
        )

    @property
    def busy(self) -> int:
        return len(self._tasks)

    async def _run(self, conversation_id: str) -> None:
        try:
            async with self._slots:
                while not self._closed:
                    # Taken without an await in between, so nothing pushed or notified
                    # from here on can be missed: it is seen by the next round.
                    pushed = self._pushed.pop(conversation_id, [])
                    look = conversation_id in self._look
                    self._look.discard(conversation_id)
                    if not pushed and not look:
                        break
                    try:
                        await self._drain(conversation_id, pushed, look)
                    except Exception:  # the sweeper retries what is left claimed
                        log.exception("sms_drain_failed", conversation_id=conversation_id)
        finally:
            self._tasks.pop(conversation_id, None)

    async def idle(self) -> None:
        """Wait until no conversation has a running worker (tests, benchmarks)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self, grace: float) -> list[T]:
        """Take no new work; let running drains finish for ``grace`` seconds, then cancel.
        Returns the pushed items no drain got to (their claims are the caller's to undo)."""
        self._closed = True
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        left = [item for items in self._pushed.values() for item in items]
        self._pushed.clear()
        return left
