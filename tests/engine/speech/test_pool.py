"""The inference pools: below the event loop's priority, synthesis apart from recognition,
the job due first taken first; and the synthesized-phrase cache."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time

import numpy as np
import pytest

from relay.engine import speech


@pytest.mark.skipif(sys.platform != "linux", reason="niceness is per thread on Linux only")
def test_inference_threads_run_below_the_event_loop():
    own = os.getpriority(os.PRIO_PROCESS, 0)
    for kind in ("stt", "tts"):
        tid = speech.inference_pool(kind).submit(threading.get_native_id).result()
        assert tid != threading.get_native_id()
        assert os.getpriority(os.PRIO_PROCESS, tid) >= max(own, speech.INFERENCE_NICENESS)


async def test_synthesis_does_not_wait_for_busy_recognition():
    release = threading.Event()
    busy = [
        asyncio.ensure_future(speech.run_inference(release.wait, 10))
        for _ in range(speech.pool._pool_size)
    ]
    try:
        said = await asyncio.wait_for(speech.run_synthesis(str.upper, "hello"), 2)
        assert said == "HELLO"
        assert not any(task.done() for task in busy)  # every recognition thread was taken
    finally:
        release.set()
        await asyncio.gather(*busy)


async def test_a_warm_engine_has_frozen_what_it_loaded(speech_models):
    # A full collection then skips the ~250k objects loaded at startup (~200 ms of stopped
    # event loop otherwise).
    from relay.config import Settings
    from relay.engine import VoiceEngine

    engine = VoiceEngine(Settings())
    await engine.warm()
    assert gc.get_freeze_count() > 10_000
    await engine.close()


@pytest.mark.skipif(sys.platform != "linux", reason="counts threads in /proc")
def test_numpy_does_not_start_spinning_blas_threads():
    import subprocess

    code = "import os, relay, numpy; print(len(os.listdir('/proc/self/task')))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr


def test_the_event_loop_never_waits_for_a_lock_an_inference_thread_holds():
    """Inference threads run at a lower priority: one holding a lock the event loop wants
    can keep the loop waiting until a core is free for it (priority inversion; the loop
    once stalled 0.85 s at 12 calls). Handing over a job and finding a loaded model take no
    lock a worker holds."""
    pool = speech.DeadlineExecutor(1, "test-inversion", 0)
    speech.piper.piper_voice()  # loaded
    held = threading.Event()
    release = threading.Event()

    def hold(lock: threading.Lock) -> None:
        with lock:
            held.set()
            release.wait(10)

    for lock in (pool._heap_lock, speech.pool._lock):
        held.clear()
        release.clear()
        holder = threading.Thread(target=hold, args=(lock,))
        holder.start()
        assert held.wait(5)
        done = threading.Event()

        def loop_side(done: threading.Event = done) -> None:
            pool.submit_due(0.0, str.upper, "x")
            speech.piper.piper_voice()
            speech.inference_pool("tts")
            done.set()

        threading.Thread(target=loop_side, daemon=True).start()
        try:
            assert done.wait(2), "waited for a lock held by another thread"
        finally:
            release.set()
            holder.join()
    pool.shutdown()


def test_a_deadline_pool_runs_what_was_queued_before_it_shuts_down():
    pool = speech.DeadlineExecutor(2, "test-shutdown", 0)
    release = threading.Event()
    futures = [pool.submit(release.wait, 10) for _ in range(2)]
    futures += [pool.submit_due(float(i), str, i) for i in range(5)]
    release.set()
    pool.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures[2:]] == ["0", "1", "2", "3", "4"]
    with pytest.raises(RuntimeError):
        pool.submit(str, 1)


def test_the_phrase_cache_keeps_to_its_budget_dropping_the_least_recently_used():
    cache = speech.PhraseCache(max_bytes=3000)
    for name in "abc":
        cache.put(("v", 8000, name), np.zeros(500, np.int16))  # 1000 bytes each
    assert cache.get(("v", 8000, "a")) is not None  # a is now the most recently used
    cache.put(("v", 8000, "d"), np.zeros(500, np.int16))
    assert cache.get(("v", 8000, "b")) is None  # the least recently used went
    assert all(cache.get(("v", 8000, k)) is not None for k in "acd")
    assert cache.bytes == 3000
    big = cache.put(("v", 8000, "e"), np.zeros(5000, np.int16))  # over budget: not kept
    assert cache.get(("v", 8000, "e")) is None and not big.flags.writeable
    cache.resize(0)
    assert cache.bytes == 0 and cache.get(("v", 8000, "a")) is None


def test_synthesis_takes_the_earliest_deadline_first():
    pool = speech.DeadlineExecutor(1, "test-tts", 0)
    release = threading.Event()
    order: list[str] = []
    busy = pool.submit(release.wait, 10)  # the one thread is taken: the rest queue
    now = time.monotonic()
    later = pool.submit_due(now + 2.0, order.append, "second sentence, due in 2 s")
    first = pool.submit(order.append, "first words of another reply, due now")
    sooner = pool.submit_due(now + 0.5, order.append, "second sentence, due in 0.5 s")
    dropped = pool.submit_due(now, order.append, "cancelled while waiting")
    assert dropped.cancel()
    release.set()
    for future in (busy, later, first, sooner):
        future.result(timeout=5)
    assert order == [
        "first words of another reply, due now",
        "second sentence, due in 0.5 s",
        "second sentence, due in 2 s",
    ]
    pool.shutdown()
