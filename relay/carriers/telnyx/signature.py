"""Who may call the relay's Telnyx webhooks: Telnyx's Ed25519 signature.

Telnyx signs every webhook with its account's Ed25519 key: ``telnyx-signature-ed25519`` is
the base64 signature of ``{telnyx-timestamp}|{raw body}``, checked with the account's public
key (base64, shown in the portal under Keys & Credentials). A timestamp older than
:data:`TOLERANCE_SECONDS` is refused, so a captured webhook cannot be replayed later.
https://developers.telnyx.com/docs/messaging/messages/receiving-webhooks#webhook-signing
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
# The Telnyx SDKs' default tolerance.
TOLERANCE_SECONDS = 300
BAD_SIGNATURE = "The telnyx-signature-ed25519 header does not match this request."


def public_key_of(text: str) -> Ed25519PublicKey:
    """A base64 Ed25519 public key (32 bytes). Raises ValueError if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def signature_is_valid(
    public_key: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    tolerance: float = TOLERANCE_SECONDS,
) -> bool:
    """Whether the account holding ``public_key`` signed this body, recently."""
    signature = headers.get(SIGNATURE_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    if not signature or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    try:
        key = public_key_of(public_key)
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + b"|" + body)
    except (ValueError, binascii.Error, InvalidSignature):
        return False
    return True


__all__ = [
    "BAD_SIGNATURE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE_SECONDS",
    "public_key_of",
    "signature_is_valid",
]
