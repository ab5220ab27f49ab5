"""The embedded default: Qwen2.5 in llama.cpp (``llama-cpp-python``, the ``local-llm`` extra).

One model per process. Its *live* context serves every call's turns, one at a time, best
priority first; each call's prompt is only ever appended to (:mod:`hosted_llm.chatml`), so
llama.cpp reuses the KV cache of everything but the new words, and a call whose prefix was
put aside while other calls ran gets it back (:mod:`hosted_llm.prefixes`). Post-call jobs run
on a second context (the weights are memory-mapped once, so it costs its KV cache, not
another copy of the model), so they never evict a live call's prefix, and they pause
between two tokens whenever a live turn wants the CPU.

Both contexts' threads run below the speech engines' (``relay.engine.speech`` runs STT and
TTS at niceness 10): a reply's first clause goes to the TTS while the model writes the rest,
and at niceness 0 the model's two threads left Piper a tenth of a core (first audio of a
short clause 0.4-1 s instead of ~0.15 s on two busy cores).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from hosted_llm import chatml
from hosted_llm.errors import LLMError, LLMResponseError, LLMTimeout, ModelUnavailable
from hosted_llm.prefixes import LivePrefixes
from hosted_llm.prefixes import common_prefix as _common_prefix
from hosted_llm.scheduling import LiveDemand, PriorityLock
from hosted_llm.types import Delta, Finish, Message, Priority, TextDelta, Tool
from hosted_llm.weights import INSTALL_HINT, MODELS, ensure_model

DEFAULT_TEMPERATURE = 0.2
DEFAULT_MAX_TOKENS = 256
LIVE_NICENESS = 12
BACKGROUND_NICENESS = 19
_END = object()


def _llama_cpp() -> Any:
    # llama.cpp's OpenMP threads spin while they wait. On a machine whose cores are shared
    # (STT, TTS, other calls, other processes) spinning threads starve the rest and each
    # other: measured 7x slower generation on 2 busy cores. Must be set before the load.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelUnavailable(f"llama-cpp-python is not installed ({INSTALL_HINT})") from exc
    return llama_cpp


def _niceness(value: int) -> Any:
    def lower() -> None:
        # Per thread on Linux; llama.cpp's worker threads, started from here, inherit it.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), value)

    return lower


class LocalBackend:
    """A :class:`hosted_llm.ChatBackend` running a GGUF model in this process."""

    def __init__(
        self,
        model: str = "qwen-1.5b",
        *,
        cache_dir: Path | None = None,
        model_path: Path | None = None,
        threads: int = 2,
        n_ctx: int | None = None,
        cache_mb: int = 1024,
        timeout_s: float = 30.0,
    ) -> None:
        if model not in MODELS and model_path is None:
            raise ModelUnavailable(f"unknown local model {model!r}; choose one of {sorted(MODELS)}")
        self.model_key = model
        self.cache_dir = cache_dir
        self.model_path = model_path
        self.threads = threads
        self.n_ctx = n_ctx or (MODELS[model].n_ctx if model in MODELS else 4096)
        self.cache_bytes = cache_mb * 1024 * 1024
        self.timeout_s = timeout_s
        self._live: Any = None
        self._background: Any = None
        self._load_lock = asyncio.Lock()
        self._live_lock = PriorityLock()
        self._background_lock = asyncio.Lock()
        self._demand = LiveDemand()
        # One thread per context: a paused post-call job never blocks a live turn's thread.
        self._live_thread = concurrent.futures.ThreadPoolExecutor(
            1, "llm-live", initializer=_niceness(LIVE_NICENESS)
        )
        self._background_thread = concurrent.futures.ThreadPoolExecutor(
            1, "llm-post-call", initializer=_niceness(BACKGROUND_NICENESS)
        )
        self._prefixes = LivePrefixes(self.cache_bytes)

    @property
    def name(self) -> str:
        return f"local:{self.model_key}"

    # ------------------------------------------------------------------ loading

    def _open(self) -> Any:
        llama_cpp = _llama_cpp()
        path = self.model_path or ensure_model(self.model_key, self.cache_dir)
        try:
            llama = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                n_batch=512,
                use_mmap=True,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelUnavailable(f"llama.cpp cannot load {path}: {exc}") from exc
        return llama

    async def load(self) -> None:
        """Join/verify the weights and load the live context (a few seconds, once)."""
        await self._context(Priority.LIVE)

    async def _context(self, priority: Priority) -> Any:
        background = priority == Priority.BACKGROUND
        if (self._background if background else self._live) is None:
            async with self._load_lock:
                loop = asyncio.get_running_loop()
                if background and self._background is None:
                    self._background = await loop.run_in_executor(
                        self._background_thread, self._open
                    )
                elif not background and self._live is None:
                    self._live = await loop.run_in_executor(self._live_thread, self._open)
        return self._background if background else self._live

    # ------------------------------------------------------------------ the seam

    async def warm(self, messages: list[Message], *, tools: list[Tool] | None = None) -> None:
        prefix = chatml.render(messages, tools, generation=False)
        async for _ in self._generate(prefix, Priority.WARM, max_tokens=1, temperature=0.0):
            pass

    async def stream(
        self,
        messages: list[Message],
        *,
        tools: list[Tool] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        json_schema: dict[str, Any] | None = None,
        model: str | None = None,
        priority: Priority = Priority.LIVE,
    ) -> AsyncIterator[Delta]:
        prompt = chatml.render(messages, tools, generation=True)
        parser = chatml.ToolCallParser() if tools else None
        made_calls = False
        count = 0
        async for piece in self._generate(
            prompt,
            priority,
            max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
            temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
            json_schema=json_schema,
        ):
            if isinstance(piece, Finish):
                for delta in parser.close() if parser is not None else ():
                    made_calls = made_calls or not isinstance(delta, TextDelta)
                    yield delta
                reason = "tool_calls" if made_calls else piece.reason
                yield Finish(reason, piece.prompt_tokens, count, piece.cached_tokens)
                return
            count += 1
            if parser is None:
                yield TextDelta(piece)
                continue
            for delta in parser.feed(piece):
                made_calls = made_calls or not isinstance(delta, TextDelta)
                yield delta

    async def aclose(self) -> None:
        self._live_thread.shutdown(wait=False, cancel_futures=True)
        self._background_thread.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ generation

    async def _generate(
        self,
        prompt: str,
        priority: Priority,
        *,
        max_tokens: int,
        temperature: float,
        json_schema: dict[str, Any] | None = None,
    ) -> AsyncIterator[Any]:
        """Text pieces as llama.cpp produces them, then one :class:`Finish`."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        background = priority == Priority.BACKGROUND
        try:
            async with asyncio.timeout(self.timeout_s):
                llama = await self._context(priority)
                grammar = _grammar(json_schema) if json_schema is not None else None
                release = await self._acquire(priority)
        except TimeoutError as exc:
            raise LLMTimeout(f"the embedded model was busy for {self.timeout_s:g} s") from exc

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        prefixes = None if background else self._prefixes

        def work() -> None:
            try:
                run = self._run(llama, prompt, max_tokens, temperature, grammar, stop, prefixes)
                for item in run:
                    if background:
                        self._demand.wait_idle()  # a live turn is running: let it have the CPU
                    put(item)
            except BaseException as exc:
                put(exc)
            finally:
                put(_END)

        executor = self._background_thread if background else self._live_thread
        try:
            future = loop.run_in_executor(executor, work)
        except BaseException:
            release()
            raise
        future.add_done_callback(lambda _: release())
        try:
            first = True
            while True:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        item = await queue.get()
                except TimeoutError as exc:
                    what = "first token" if first else "next token"
                    raise LLMTimeout(f"no {what} within {self.timeout_s:g} s") from exc
                first = False
                if item is _END:
                    return
                if isinstance(item, LLMError):
                    raise item
                if isinstance(item, BaseException):
                    raise LLMResponseError(f"llama.cpp failed: {item!r}"[:300]) from item
                yield item
        finally:
            stop.set()

    async def _acquire(self, priority: Priority) -> Any:
        """Wait for our turn on the model; returns the (thread-safe) release function."""
        loop = asyncio.get_running_loop()
        if priority == Priority.BACKGROUND:
            await self._background_lock.acquire()
            await self._demand.until_idle()
            return lambda: loop.call_soon_threadsafe(self._background_lock.release)
        demand = self._demand.__enter__()
        try:
            await self._live_lock.acquire(priority)
        except BaseException:
            demand.__exit__()
            raise

        def release() -> None:
            demand.__exit__()
            loop.call_soon_threadsafe(self._live_lock.release)

        return release

    @staticmethod
    def _run(
        llama: Any,
        prompt: str,
        max_tokens: int,
        temperature: float,
        grammar: Any,
        stop: threading.Event,
        prefixes: LivePrefixes | None,
    ) -> Iterator[Any]:
        try:
            tokens = llama.tokenize(prompt.encode(), add_bos=False, special=True)
            prompt_tokens = len(tokens)
            if prompt_tokens + max_tokens > llama.n_ctx():
                raise LLMResponseError(
                    f"the prompt ({prompt_tokens} tokens) and reply ({max_tokens}) do not fit "
                    f"the model's context of {llama.n_ctx()} tokens"
                )
            if prefixes is not None:
                cached = prefixes.prepare(llama, tokens)
            else:
                cached = _common_prefix(llama.input_ids[: llama.n_tokens], tokens)
            chunks = llama.create_completion(
                tokens,
                max_tokens=max_tokens,
                temperature=temperature,
                stop=chatml.STOP,
                grammar=grammar,
                stream=True,
            )
        except ValueError as exc:
            raise LLMResponseError(f"llama.cpp refused the prompt: {exc}") from exc
        reason = "stop"
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                if choice.get("text"):
                    yield choice["text"]
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
                if stop.is_set():
                    reason = "cancelled"
                    break
        finally:
            chunks.close()
        yield Finish(reason, prompt_tokens=prompt_tokens, cached_tokens=cached)


def _grammar(schema: dict[str, Any]) -> Any:
    llama_cpp = _llama_cpp()
    try:
        return llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as exc:  # llama.cpp's converter rejects some schema features
        raise LLMResponseError(f"cannot turn the JSON schema into a grammar: {exc}") from exc
