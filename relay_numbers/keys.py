"""Carrier keys: the name of the carrier account a number is routed by, and that scopes the
carrier's message ids. One string, ``<provider>:<the carrier's name for the account>``:

  ``sim:<project id>``        the sim carrier, one account per project (it needs no credentials)
  ``twilio:<AccountSid>``     a Twilio account a project added (``/v1/carrier-accounts``)
  ``twilio:deployment``       the deployment's own Twilio account (``RELAY_TWILIO_*``)
"""

from __future__ import annotations

DEPLOYMENT = "deployment"
TWILIO_DEPLOYMENT_KEY = f"twilio:{DEPLOYMENT}"


def sim_key(project_id: str) -> str:
    return f"sim:{project_id}"


def twilio_key(account_sid: str) -> str:
    return f"twilio:{account_sid}"


def twilio_inbound_keys(account_sid: str, deployment_sid: str) -> tuple[str, ...]:
    """The keys a signed Twilio webhook for ``account_sid`` may reach: the account's own,
    and the deployment's when it is the deployment's account (or names none)."""
    keys: list[str] = []
    if account_sid:
        keys.append(twilio_key(account_sid))
    if not account_sid or account_sid == deployment_sid:
        keys.append(TWILIO_DEPLOYMENT_KEY)
    return tuple(keys)


__all__ = [
    "DEPLOYMENT",
    "TWILIO_DEPLOYMENT_KEY",
    "sim_key",
    "twilio_inbound_keys",
    "twilio_key",
]
