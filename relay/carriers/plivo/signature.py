"""Who may call the relay's Plivo webhooks: Plivo's V3 request signature.

Plivo signs every callback with the account's auth token: ``X-Plivo-Signature-V3`` is
base64(HMAC-SHA256(token, url + "." + nonce)) where, for a POST, ``url`` is the requested URL
with its query sorted and the form's fields appended sorted as ``keyvalue`` pairs, and the
nonce comes in ``X-Plivo-Signature-V3-Nonce``. The header may carry several signatures,
comma-separated (one per token while a token rotates). The check is the SDK's own
(``plivo.utils.signature_v3``); https://www.plivo.com/docs/voice/concepts/signature-validation
"""

from __future__ import annotations

from collections.abc import Mapping

from relay.logs import get_logger

log = get_logger("relay.carriers.plivo")

BAD_SIGNATURE = "The X-Plivo-Signature-V3 header does not match this request."
SIGNATURE_HEADER = "X-Plivo-Signature-V3"
NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"


def signature_is_valid(
    method: str,
    url: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    auth_token: str,
) -> bool:
    """Whether Plivo signed this request, for the URL Plivo requested."""
    # On first use: the SDK imports requests and lxml, which a relay without Plivo skips.
    from plivo.utils.signature_v3 import validate_v3_signature

    signature, nonce = headers.get(SIGNATURE_HEADER), headers.get(NONCE_HEADER)
    if not signature or not nonce or not auth_token:
        return False
    try:
        return bool(
            validate_v3_signature(
                method.upper(), url, nonce, auth_token, signature, params=dict(params)
            )
        )
    except Exception as exc:  # the SDK raises its ValidationError on a malformed argument
        log.info("plivo_signature_unreadable", error=type(exc).__name__)
        return False


__all__ = ["BAD_SIGNATURE", "NONCE_HEADER", "SIGNATURE_HEADER", "signature_is_valid"]
