"""Object ids: a type prefix, then 12 hex digits of milliseconds, then 12 random hex digits.

Ids sort by creation time, so lists can page on the id alone with a stable order.
"""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def looks_like(prefix: str, value: str) -> bool:
    return value.startswith(prefix + "_") and len(value) == len(prefix) + 25
