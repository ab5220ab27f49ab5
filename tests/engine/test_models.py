"""The inference pools: below the event loop's priority, synthesis apart from recognition."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading

import pytest

from relay.engine import models


@pytest.mark.skipif(sys.platform != "linux", reason="niceness is per thread on Linux only")
def test_inference_threads_run_below_the_event_loop():
    own = os.getpriority(os.PRIO_PROCESS, 0)
    for kind in ("stt", "tts"):
        tid = models.inference_pool(kind).submit(threading.get_native_id).result()
        assert tid != threading.get_native_id()
        assert os.getpriority(os.PRIO_PROCESS, tid) >= max(own, models.INFERENCE_NICENESS)


async def test_synthesis_does_not_wait_for_busy_recognition():
    release = threading.Event()
    busy = [
        asyncio.ensure_future(models.run_inference(release.wait, 10))
        for _ in range(models._pool_size)
    ]
    try:
        said = await asyncio.wait_for(models.run_synthesis(str.upper, "hello"), 2)
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
