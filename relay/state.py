"""Typed application state, reached through ``app[APP_STATE]``."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from relay.config import Settings
from relay.ratelimit import RateLimiter
from relay.secretbox import SecretBox
from relay.store.db import Database

if TYPE_CHECKING:
    from relay.carriers import CarrierRegistry


FAILED_KEYS_PER_SECOND = 1.0
FAILED_KEYS_BURST = 20


@dataclass
class AppState:
    settings: Settings
    db: Database
    carriers: CarrierRegistry
    limiter: RateLimiter
    signing_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    # Opens carrier accounts' stored credentials (RELAY_ENCRYPTION_KEY).
    secret_box: SecretBox = field(default_factory=lambda: SecretBox(""))
    key_cache: dict[str, tuple[float, Any]] = field(default_factory=dict)
    key_loads: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    # Failed key lookups per client address: a guesser is slowed, and costs no query.
    failed_keys: RateLimiter = field(
        default_factory=lambda: RateLimiter(FAILED_KEYS_PER_SECOND, FAILED_KEYS_BURST)
    )


APP_STATE: web.AppKey[AppState] = web.AppKey("relay_state", AppState)
