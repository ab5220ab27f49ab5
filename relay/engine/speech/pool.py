"""What every speech engine shares in a process: the inference threads, the loaded models,
the synthesized-phrase cache.

Blocking inference runs in :func:`inference_pool` threads (one pool for recognition, one for
synthesis), at a lower priority than the event loop, never on it. A model is loaded once per
process (:func:`load_once`) and shared by every call; ``warm`` in :mod:`.registry` loads
them at startup so the first call does not pay for it. :func:`configure` sizes the pools and
the cache before the first call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import heapq
import itertools
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from relay.engine.codecs import PCM
from relay.logs import get_logger

log = get_logger("relay.engine.speech")

T = TypeVar("T")

_lock = threading.Lock()
_models: dict[str, Any] = {}
_pools: dict[str, DeadlineExecutor] = {}
_pool_size = 2
INFERENCE_NICENESS = 10


def configure(*, inference_threads: int, tts_cache_bytes: int | None = None) -> None:
    """Set the inference pools' size (before the first call uses them) and the size of the
    synthesized-phrase cache."""
    global _pool_size
    _pool_size = inference_threads
    if tts_cache_bytes is not None:
        phrases.resize(tts_cache_bytes)


class PhraseCache:
    """Synthesized audio by (engine, rate, text), least recently used dropped first, within
    a byte budget. Greetings, fillers, fallbacks and reprompts are said again and again, and
    synthesizing one costs about a tenth of its length in CPU (Piper). The arrays are
    read-only: every caller gets the same one."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[str, int, str], PCM] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, str]) -> PCM | None:
        with self._lock:
            pcm = self._items.get(key)
            if pcm is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return pcm

    def put(self, key: tuple[str, int, str], pcm: PCM) -> PCM:
        pcm.flags.writeable = False
        if pcm.nbytes > self.max_bytes:
            return pcm
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._items[key] = pcm
            self.bytes += pcm.nbytes
            self._trim()
        return pcm

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            self._trim()

    def _trim(self) -> None:
        while self.bytes > self.max_bytes and self._items:
            _key, dropped = self._items.popitem(last=False)
            self.bytes -= dropped.nbytes


phrases = PhraseCache(32 * 1024 * 1024)


PoolKind = Literal["stt", "tts"]


_Job = tuple[float, int, concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class DeadlineExecutor(concurrent.futures.Executor):
    """Threads that take the queued job with the earliest deadline first (``submit`` is due
    now). Synthesis runs here: a reply's first words are due the moment they are asked for,
    its later sentences only when the audio before them has played, so a burst of other
    calls' first words goes ahead of them, and they still go ahead of first words asked for
    after their own deadline.

    The event loop hands jobs over through a lock-free queue and never waits on a lock a
    worker holds: workers run at a lower priority (:func:`_yield_to_the_event_loop`), and
    one holding a lock the loop wants can keep it waiting for as long as it waits for a
    core (priority inversion)."""

    def __init__(self, workers: int, thread_name_prefix: str, niceness: int) -> None:
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._heap: list[_Job] = []  # jobs taken from the inbox, workers only
        self._heap_lock = threading.Lock()
        self._seq = itertools.count()
        self._shutdown = False
        self._stopping = False  # a worker has seen the end: run what is left, then stop
        self._threads = [
            threading.Thread(
                target=self._work, args=(niceness,), name=f"{thread_name_prefix}_{i}", daemon=True
            )
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        return self.submit_due(time.monotonic(), functools.partial(fn, *args, **kwargs))

    def submit_due(
        self, deadline: float, fn: Callable[..., T], *args: Any
    ) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` before jobs due later than ``deadline`` (``time.monotonic()``)."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new work after shutdown")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._inbox.put((deadline, next(self._seq), future, fn, args))
        return future

    def _next(self) -> _Job | None:
        """The earliest-due job waiting (blocks while there is none); None: shut down."""
        while True:
            with self._heap_lock:
                self._take_inbox()
                if self._heap:
                    return heapq.heappop(self._heap)
                if self._stopping:
                    return None
            job = self._inbox.get()
            with self._heap_lock:
                if job is None:
                    self._stopping = True
                else:
                    heapq.heappush(self._heap, job)

    def _take_inbox(self) -> None:
        """Move every job handed over so far into the heap (``_heap_lock`` held)."""
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return
            if job is None:
                self._stopping = True
            else:
                heapq.heappush(self._heap, job)

    def _work(self, niceness: int) -> None:
        _yield_to_the_event_loop(niceness)
        while (job := self._next()) is not None:
            _deadline, _seq, future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
        self._inbox.put(None)  # the next worker stops too

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        if cancel_futures:
            with self._heap_lock:
                self._take_inbox()
                for _d, _s, future, _f, _a in self._heap:
                    future.cancel()
                self._heap.clear()
        self._inbox.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def inference_pool(kind: PoolKind = "stt") -> DeadlineExecutor:
    """The threads recognition (``stt``) or synthesis (``tts``) runs in. Two pools, so a
    reply's first words (tens of ms of Piper) never queue behind other calls' Whisper runs
    (hundreds of ms, one at a time in CTranslate2). Both take the job due first
    (:class:`DeadlineExecutor`)."""
    pool = _pools.get(kind)  # without the lock once made (see load_once)
    if pool is not None:
        return pool
    with _lock:
        pool = _pools.get(kind)
        if pool is None:
            pool = DeadlineExecutor(_pool_size, f"relay-{kind}", INFERENCE_NICENESS)
            _pools[kind] = pool
        return pool


def _yield_to_the_event_loop(niceness: int) -> None:
    """Inference threads run at a lower priority than the event loop, which paces every
    call's audio and answers its webhooks: when the cores are busy, a 20 ms frame must not
    wait behind a Whisper or Piper run. Threads the models start from here (CTranslate2's,
    ONNX Runtime's) inherit it. Linux sets niceness per thread (once: a process that is not
    root may lower its priority but not raise it again); elsewhere this does nothing."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


async def run_inference(fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
    """Run blocking model code (recognition, or anything else) in the inference pool, before
    work due after ``deadline`` (``time.monotonic()``; None: now)."""
    return await _run_due(inference_pool("stt"), deadline, fn, *args)


async def run_synthesis(fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
    """Run blocking speech synthesis in its own pool, before work due after ``deadline``
    (``time.monotonic()``; None: now, the caller is waiting for it)."""
    return await _run_due(inference_pool("tts"), deadline, fn, *args)


async def _run_due(
    pool: DeadlineExecutor, deadline: float | None, fn: Callable[..., T], *args: Any
) -> T:
    due = time.monotonic() if deadline is None else deadline
    return await asyncio.wrap_future(pool.submit_due(due, fn, *args))


def load_once(key: str, factory: Callable[[], T]) -> T:
    """The model ``key``, made by ``factory`` the first time any call asks for it."""
    # Loaded models are read without the lock: the event loop asks for them too, and the
    # lock may be held by an inference thread, which runs at a lower priority and can wait
    # long for a core.
    found: T | None = _models.get(key)
    if found is not None:
        return found
    with _lock:
        if key not in _models:
            started = time.perf_counter()
            _models[key] = factory()
            log.info("model_loaded", model=key, seconds=round(time.perf_counter() - started, 3))
        model: T = _models[key]
        return model
