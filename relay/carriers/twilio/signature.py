"""Who may call the relay's Twilio webhooks: Twilio's request signature, checked one way for
voice and messaging alike.

A request is Twilio's when ``X-Twilio-Signature`` matches the URL Twilio requested and the
form it posted: HMAC-SHA1 with the account's auth token or, for Twilio's shared-key signing,
the algorithm named in ``X-Twilio-Webhooks-Signature-Settings`` with the webhook signing key.
"""

from __future__ import annotations

from collections.abc import Mapping

from twilio.request_validator import RequestValidator, get_signature_algorithm

from relay.logs import get_logger

log = get_logger("relay.carriers.twilio")

BAD_SIGNATURE = "The X-Twilio-Signature header does not match this request."
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"


def signature_is_valid(
    url: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    auth_token: str,
    signing_key: str,
) -> bool:
    """Whether Twilio signed this request, for the URL Twilio requested."""
    signature = headers.get("X-Twilio-Signature")
    if not signature:
        return False
    signing_settings = headers.get(SETTINGS_HEADER)
    if signing_settings:
        secret = signing_key
        algorithm = get_signature_algorithm(signing_settings)
    else:
        secret, algorithm = auth_token, None
    if not secret:
        log.warning("twilio_secret_not_configured", shared_key=bool(signing_settings))
        return False
    return bool(RequestValidator(secret).validate(url, dict(params), signature, algorithm))


__all__ = ["BAD_SIGNATURE", "SETTINGS_HEADER", "signature_is_valid"]
