"""Each conversation's place in the embedded model's one live context.

llama.cpp reuses the KV cache for the longest common prefix of the context's tokens and the
next prompt (``Llama.generate``), so a call whose turns follow each other on the context pays
only for what was said since its last turn. When another conversation takes the context in
between, :class:`LivePrefixes` copies the first one's KV cells out (sequence 0 only, ~28 KB
a token for the 1.5B model, ~12 KB for the 0.5B) and copies them back before its next turn.

llama-cpp-python's own ``LlamaRAMCache`` is not used: it calls ``save_state`` after every
completion, which also copies the logits of up to ``n_batch`` positions (512 x 151,936
floats for Qwen: ~300 MB) and loads them back on a hit, on every turn's path.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.intc]


def common_prefix(a: Sequence[int] | Tokens, b: Sequence[int] | Tokens) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n


class SavedPrefixes:
    """KV states put aside, keyed by their tokens; the least recently used go first once
    they exceed ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: list[tuple[Tokens, bytes]] = []  # oldest first

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return sum(len(data) for _, data in self._entries)

    def best(self, tokens: Sequence[int] | Tokens) -> tuple[int, int]:
        """``(index, shared)`` of the entry sharing the longest prefix with ``tokens``
        (``(-1, 0)`` if none shares any)."""
        found, shared = -1, 0
        for index, (key, _) in enumerate(self._entries):
            n = common_prefix(key, tokens)
            if n > shared:
                found, shared = index, n
        return found, shared

    def take(self, index: int) -> tuple[Tokens, bytes]:
        return self._entries.pop(index)

    def put(self, tokens: Tokens, data: bytes) -> None:
        """Keep ``data`` for ``tokens``; entries that ``tokens`` extends are dropped."""
        self._entries = [
            (key, old)
            for key, old in self._entries
            if common_prefix(key, tokens) < len(key) or len(key) > len(tokens)
        ]
        if len(data) > self.capacity_bytes:
            return
        self._entries.append((tokens, data))
        while self.size_bytes > self.capacity_bytes:
            self._entries.pop(0)


class LivePrefixes:
    """Swaps conversations in and out of a ``llama_cpp.Llama`` context (call from the thread
    that owns the context)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.saved = SavedPrefixes(capacity_bytes)

    def prepare(self, llama: Any, tokens: Sequence[int]) -> int:
        """Give the context the longest known prefix of ``tokens``, saving the conversation
        it held if ``tokens`` do not continue it. Returns how many tokens are already in the
        KV cache (llama.cpp then evaluates only the rest)."""
        held = llama.n_tokens
        live: Tokens = llama.input_ids[:held]
        shared = common_prefix(live, tokens)
        if shared < held:  # llama.cpp would drop the rest of what the context holds
            self.saved.put(live.copy(), _kv_bytes(llama))
        index, saved = self.saved.best(tokens)
        if saved > shared:
            key, data = self.saved.take(index)
            if _restore(llama, key, data):
                return saved
            return 0
        return shared


def _kv_bytes(llama: Any) -> bytes:
    from llama_cpp import llama_cpp as c  # the optional extra; present once a model loaded

    ctx = llama.ctx
    size = c.llama_state_seq_get_size(ctx, 0)
    buffer = (ctypes.c_uint8 * size)()
    written = c.llama_state_seq_get_data(ctx, buffer, size, 0)
    return bytes(memoryview(buffer)[:written])


def _restore(llama: Any, tokens: Tokens, data: bytes) -> bool:
    from llama_cpp import llama_cpp as c  # as in _kv_bytes

    llama._ctx.kv_cache_seq_rm(0, 0, -1)
    buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    if c.llama_state_seq_set_data(llama.ctx, buffer, len(data), 0) != len(data):
        llama._ctx.kv_cache_seq_rm(0, 0, -1)
        llama.n_tokens = 0
        return False
    llama.input_ids[: len(tokens)] = tokens
    llama.n_tokens = len(tokens)
    # The logits of the last position are not part of a sequence's state: llama.cpp must
    # evaluate at least one token before it samples (Llama.generate replays the last one).
    llama._requires_eval = True
    return True
