"""Secrets at rest: carrier credentials are stored as Fernet tokens (AES-128-CBC with an
HMAC-SHA256, the ``cryptography`` package), never as the secret itself.

``RELAY_ENCRYPTION_KEY`` holds one key or several, comma-separated (each from
``Fernet.generate_key()``). The first encrypts; every one decrypts, so a key is rotated by
putting the new key first and keeping the old one until :meth:`SecretBox.rotate` has
re-encrypted every stored secret (the relay does so at start-up).

    SecretBoxError          the box cannot do what was asked; ``code`` is stable
    ├── KeyMissing          no key configured (encryption_key_missing)
    ├── KeyInvalid          a configured key is not a Fernet key (encryption_key_invalid)
    └── CannotDecrypt       no configured key opens this token (encryption_key_mismatch)
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_MISSING = (
    "No encryption key: set RELAY_ENCRYPTION_KEY (make one with `relay keys encryption`) "
    "to store carrier credentials."
)
KEY_INVALID = (
    "RELAY_ENCRYPTION_KEY holds something that is not a Fernet key (32 url-safe base64 bytes)."
)
CANNOT_DECRYPT = "No key in RELAY_ENCRYPTION_KEY opens the stored credentials."


class SecretBoxError(Exception):
    code = "encryption_error"


class KeyMissing(SecretBoxError):
    code = "encryption_key_missing"


class KeyInvalid(SecretBoxError):
    code = "encryption_key_invalid"


class CannotDecrypt(SecretBoxError):
    code = "encryption_key_mismatch"


def new_key() -> str:
    """A fresh key for ``RELAY_ENCRYPTION_KEY``."""
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts with the first key of ``keys`` (comma-separated), decrypts with any."""

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        try:
            self._fernet = MultiFernet([Fernet(k) for k in parts]) if parts else None
        except (ValueError, TypeError):
            raise KeyInvalid(KEY_INVALID) from None  # the library's message may quote the key
        self.key_count = len(parts)

    @property
    def configured(self) -> bool:
        return self._fernet is not None

    def _box(self) -> MultiFernet:
        if self._fernet is None:
            raise KeyMissing(KEY_MISSING)
        return self._fernet

    def encrypt(self, plaintext: str) -> str:
        return self._box().encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._box().decrypt(token.encode()).decode()
        except InvalidToken:
            raise CannotDecrypt(CANNOT_DECRYPT) from None

    def rotate(self, token: str) -> str:
        """The same secret, encrypted with the first key."""
        try:
            return self._box().rotate(token.encode()).decode()
        except InvalidToken:
            raise CannotDecrypt(CANNOT_DECRYPT) from None


__all__ = [
    "CannotDecrypt",
    "KeyInvalid",
    "KeyMissing",
    "SecretBox",
    "SecretBoxError",
    "new_key",
]
