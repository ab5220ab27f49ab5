"""Live turns go before warm-ups, which go before post-call work."""

from __future__ import annotations

import asyncio

from hosted_llm.scheduling import LiveDemand, PriorityLock
from hosted_llm.types import Priority


async def test_the_best_priority_waiter_goes_next():
    lock = PriorityLock()
    order: list[str] = []
    await lock.acquire(Priority.LIVE)

    async def user(name: str, priority: int) -> None:
        await lock.acquire(priority)
        order.append(name)
        lock.release()

    tasks = [
        asyncio.create_task(user("post-call", Priority.BACKGROUND)),
        asyncio.create_task(user("warm", Priority.WARM)),
        asyncio.create_task(user("turn-a", Priority.LIVE)),
        asyncio.create_task(user("turn-b", Priority.LIVE)),
    ]
    await asyncio.sleep(0)
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["turn-a", "turn-b", "warm", "post-call"]
    assert not lock.locked


async def test_a_cancelled_waiter_does_not_keep_the_lock():
    lock = PriorityLock()
    await lock.acquire(Priority.LIVE)
    waiter = asyncio.create_task(lock.acquire(Priority.LIVE))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)
    lock.release()
    assert not lock.locked


async def test_live_demand_tells_background_work_when_to_run():
    demand = LiveDemand()
    assert not demand.busy
    with demand:
        assert demand.busy and not demand.wait_idle(0.01)
        waiting = asyncio.create_task(demand.until_idle())
        await asyncio.sleep(0.01)
        assert not waiting.done()
    await asyncio.wait_for(waiting, 1)
    assert demand.wait_idle(0)
