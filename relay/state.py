"""Typed application state, reached through ``app[APP_STATE]``."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from relay.config import Settings
from relay.ratelimit import RateLimiter
from relay.store.db import Database

if TYPE_CHECKING:
    from relay.carriers import CarrierRegistry


@dataclass
class AppState:
    settings: Settings
    db: Database
    carriers: CarrierRegistry
    limiter: RateLimiter
    signing_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    key_cache: dict[str, tuple[float, Any]] = field(default_factory=dict)
    key_loads: dict[str, asyncio.Future[Any]] = field(default_factory=dict)


APP_STATE: web.AppKey[AppState] = web.AppKey("relay_state", AppState)
