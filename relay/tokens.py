"""Short-lived signed tokens: a media socket or a download URL is good for one call, briefly.

Format: ``base64url(json payload) . base64url(hmac-sha256)``, payload ``{"sub", "purpose",
"exp"}``. The key is the process's signing key (``RELAY_SIGNING_SECRET``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time


class TokenError(Exception):
    pass


class TokenExpired(TokenError):
    """A good token whose time is up."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: bytes, subject: str, purpose: str, ttl_seconds: float) -> str:
    payload = json.dumps(
        {"sub": subject, "purpose": purpose, "exp": int(time.time() + ttl_seconds)},
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify(key: bytes, token: str, purpose: str, *, now: float | None = None) -> str:
    """The token's subject (a call id), or :class:`TokenError` saying why not."""
    try:
        raw_payload, raw_mac = token.split(".", 1)
        payload = _unb64(raw_payload)
        mac = _unb64(raw_mac)
    except ValueError as exc:
        raise TokenError("malformed token") from exc
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
        raise TokenError("bad signature")
    try:
        claims = json.loads(payload)
    except ValueError as exc:
        raise TokenError("malformed token") from exc
    if claims.get("purpose") != purpose:
        raise TokenError("token is for another purpose")
    if float(claims.get("exp", 0)) < (time.time() if now is None else now):
        raise TokenExpired("token expired")
    subject = claims.get("sub")
    if not isinstance(subject, str):
        raise TokenError("malformed token")
    return subject
