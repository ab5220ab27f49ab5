"""Carrier keys: the name of the carrier account a number is routed by, and that scopes the
carrier's message ids. One string, ``<provider>:<the carrier's name for the account>``:

  ``sim:<project id>``        the sim carrier, one account per project (it needs no credentials)
  ``twilio:<AccountSid>``     a Twilio account a project added (``/v1/carrier-accounts``)
  ``twilio:deployment``       the deployment's own Twilio account (``RELAY_TWILIO_*``)
  ``telnyx:<connection id>``  a Telnyx account a project added, by its Call Control App
  ``plivo:<auth id>``         a Plivo account a project added
"""

from __future__ import annotations

DEPLOYMENT = "deployment"
TWILIO_DEPLOYMENT_KEY = f"twilio:{DEPLOYMENT}"


def sim_key(project_id: str) -> str:
    return f"sim:{project_id}"


def twilio_key(account_sid: str) -> str:
    return f"twilio:{account_sid}"


def telnyx_key(connection_id: str) -> str:
    return f"telnyx:{connection_id}"


def plivo_key(auth_id: str) -> str:
    return f"plivo:{auth_id}"


def twilio_keys(account_sid: str, *, deployment: bool) -> tuple[str, ...]:
    """The keys a Twilio webhook for ``account_sid`` reaches, once signed: the account's own,
    and the deployment's too when the deployment's token signed it."""
    keys = [twilio_key(account_sid)] if account_sid else []
    if deployment:
        keys.append(TWILIO_DEPLOYMENT_KEY)
    return tuple(keys)


__all__ = [
    "DEPLOYMENT",
    "TWILIO_DEPLOYMENT_KEY",
    "plivo_key",
    "sim_key",
    "telnyx_key",
    "twilio_keys",
    "twilio_key",
]
