"""Object ids: a type prefix, then 12 hex digits of milliseconds, then 12 random hex digits.

Ids sort by creation time, so lists can page on the id alone with a stable order.

The random part comes from the OS's CSPRNG like ``secrets.token_hex``, but read 4 KiB at a
time per thread: a text makes half a dozen ids, and a system call for each (a VM makes them
dear) was 4% of the relay's CPU per text. A forked child starts with a fresh buffer.
"""

from __future__ import annotations

import os
import threading
import time

_BUFFER_BYTES = 4096


class _Random(threading.local):
    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0


_random = _Random()


def _reset_after_fork() -> None:
    global _random
    _random = _Random()


os.register_at_fork(after_in_child=_reset_after_fork)


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes from the OS's CSPRNG, as hex (as ``secrets.token_hex``)."""
    state = _random
    pos = state.pos
    if pos + nbytes > len(state.buf):
        state.buf, pos = os.urandom(max(_BUFFER_BYTES, nbytes)), 0
    state.pos = pos + nbytes
    return state.buf[pos : pos + nbytes].hex()


def new_id(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000):012x}{random_hex(6)}"


def looks_like(prefix: str, value: str) -> bool:
    return value.startswith(prefix + "_") and len(value) == len(prefix) + 25
