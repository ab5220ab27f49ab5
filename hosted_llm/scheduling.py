"""Who may use the one embedded model next.

Live calls' turns and warm-ups take turns on the model's live context, best priority first
(:class:`PriorityLock`). Post-call jobs run on a context of their own, one at a time, and
only while no live work is waiting or running: :class:`LiveDemand` counts that work and a
background generation pauses between two tokens whenever it is non-zero.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading


class PriorityLock:
    """An asyncio lock that wakes the waiter with the lowest priority number first
    (FIFO among equals)."""

    def __init__(self) -> None:
        self._held = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def locked(self) -> bool:
        return self._held

    async def acquire(self, priority: int) -> None:
        if not self._held and not self._waiters:
            self._held = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed the lock as we were cancelled: pass it on
            else:
                self._waiters = [w for w in self._waiters if w[2] is not fut]
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the lock passes straight to it
                return
        self._held = False


class LiveDemand:
    """A count of live requests waiting for or using the model. Changed on the event loop;
    read from there (:meth:`until_idle`) and from the post-call thread (:meth:`wait_idle`)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._idle_async = asyncio.Event()
        self._idle_async.set()

    def __enter__(self) -> LiveDemand:
        with self._lock:
            self._count += 1
            self._idle.clear()
            self._idle_async.clear()
        return self

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._count -= 1
            if self._count == 0:
                self._idle.set()
                self._idle_async.set()

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block the calling thread until no live request waits or runs."""
        return self._idle.wait(timeout)

    async def until_idle(self) -> None:
        await self._idle_async.wait()
