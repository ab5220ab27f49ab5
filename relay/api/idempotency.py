"""``Idempotency-Key`` on the API's POSTs, with Stripe's semantics.

A client that is not sure its POST arrived (a timeout, a dropped connection) sends it again
with the same key and gets the first answer back instead of a second object:

* same key, same method, path and body -> the first response, replayed byte for byte, with
  ``Idempotent-Replayed: true``;
* same key, another request -> ``422 idempotency_key_reused``;
* same key while the first request is still running -> ``409 idempotency_key_in_use``
  (``Retry-After: 1``): one runs, the other is told to come back, nothing waits on a lock.

Keys are scoped to the project and kept 24 hours, in the database (every relay node sees
them). An answer may hold a secret shown once (a new API key, a webhook secret), so neither
the key nor the answer is stored as sent: the row is found by the key's SHA-256, and the
answer is encrypted (AES-GCM) with a key derived from the Idempotency-Key, which only the
client holds. Only answers are kept: a request that fails (an error, a validation failure, a lost
connection) forgets its key, so the same key may be sent again. A key whose request is
still marked running after :data:`ABANDONED_AFTER` was left by a relay that died mid-request
and runs again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from relay.errors import BadRequest, Conflict, ValidationFailed
from relay.store.db import Database
from relay.store.models import IdempotencyKey, utcnow

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
KEPT = timedelta(hours=24)
ABANDONED_AFTER = timedelta(minutes=5)  # far past any request's own limits
PURGE_EVERY_SECONDS = 600.0
KEY_PATTERN = re.compile(r"[\x20-\x7e]{1,255}")

INVALID_KEY = "Idempotency-Key must be 1-255 printable ASCII characters."
REUSED = (
    "This Idempotency-Key was first sent with a different request ({first}); "
    "send a new key for a new request."
)
IN_USE = (
    "A request with this Idempotency-Key is still being processed; "
    "send it again once that one has answered."
)

_last_purge = 0.0


def _lookup(key: str) -> str:
    return hashlib.sha256(b"lookup\0" + key.encode()).hexdigest()


def _cipher(project_id: str, key: str) -> AESGCM:
    return AESGCM(hashlib.sha256(f"answer\0{project_id}\0{key}".encode()).digest())


def seal(project_id: str, key: str, body: bytes) -> str:
    nonce = os.urandom(12)
    sealed = _cipher(project_id, key).encrypt(nonce, body, project_id.encode())
    return base64.b64encode(nonce + sealed).decode()


def unseal(project_id: str, key: str, stored: str) -> bytes:
    raw = base64.b64decode(stored)
    return _cipher(project_id, key).decrypt(raw[:12], raw[12:], project_id.encode())


@dataclass(slots=True)
class Claim:
    """A key this request holds while it runs: :meth:`keep` its answer, or :meth:`forget`."""

    db: Database
    project_id: str
    key: str  # as the client sent it (never stored)

    async def keep(self, response: web.StreamResponse) -> None:
        """Store a whole JSON answer for replay; anything else is not replayable (forgotten)."""
        body = response.body if isinstance(response, web.Response) else None
        if not isinstance(body, bytes):
            await self.forget()
            return
        async with self.db.writing() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.project_id == self.project_id,
                    IdempotencyKey.key == _lookup(self.key),
                )
                .values(
                    status=response.status,
                    content_type=response.content_type,
                    body=seal(self.project_id, self.key, body),
                )
            )

    async def forget(self) -> None:
        # Shielded: a cancelled request must still let go of its key.
        await asyncio.shield(self._delete())

    async def _delete(self) -> None:
        async with self.db.writing() as session:
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.project_id == self.project_id,
                    IdempotencyKey.key == _lookup(self.key),
                )
            )


def fingerprint(method: str, path: str, body: Any) -> str:
    """The request as a key is bound to it: the same JSON however it is spaced or ordered."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


async def claim(
    db: Database, project_id: str, raw_key: str, method: str, path: str, body: Any
) -> Claim | web.Response:
    """Take ``raw_key`` for this request, or answer it: the first response replayed, or an
    error (:class:`~relay.errors.APIError`) when the key belongs to another or running
    request."""
    key = raw_key.strip()
    if not KEY_PATTERN.fullmatch(key):
        raise BadRequest(INVALID_KEY, code="invalid_idempotency_key", field=HEADER)
    digest, lookup = fingerprint(method, path, body), _lookup(key)
    now = utcnow()
    await _purge(db)
    try:
        async with db.writing() as session:
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.project_id == project_id,
                    IdempotencyKey.key == lookup,
                    or_(
                        IdempotencyKey.created_at < now - KEPT,
                        (IdempotencyKey.status.is_(None))
                        & (IdempotencyKey.created_at < now - ABANDONED_AFTER),
                    ),
                )
            )
            await session.execute(
                insert(IdempotencyKey).values(
                    project_id=project_id,
                    key=lookup,
                    method=method,
                    path=path[:500],
                    fingerprint=digest,
                    created_at=now,
                )
            )
        return Claim(db, project_id, key)
    except IntegrityError:
        pass  # the key is taken: by this very request sent before, or by another
    async with db.session() as session:
        row = (
            await session.execute(
                select(IdempotencyKey).where(
                    IdempotencyKey.project_id == project_id, IdempotencyKey.key == lookup
                )
            )
        ).scalar_one_or_none()
    if row is None:  # it was forgotten in between: this request may run after all
        return await claim(db, project_id, raw_key, method, path, body)
    if row.fingerprint != digest:
        raise ValidationFailed(
            REUSED.format(first=f"{row.method} {row.path}"),
            code="idempotency_key_reused",
            field=HEADER,
        )
    if row.status is None or row.body is None:
        raise Conflict(IN_USE, code="idempotency_key_in_use", headers={"Retry-After": "1"})
    return web.Response(
        status=row.status,
        body=unseal(project_id, key, row.body),
        content_type=row.content_type or "application/json",
        headers={REPLAYED: "true"},
    )


async def _purge(db: Database) -> None:
    """Drop expired keys of every project, at most every few minutes per process."""
    global _last_purge
    if time.monotonic() - _last_purge < PURGE_EVERY_SECONDS:
        return
    _last_purge = time.monotonic()
    async with db.writing() as session:
        await session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - KEPT)
        )
