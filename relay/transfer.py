"""Where a call may be transferred: the one check every transfer passes, whoever asks for it.

A transfer makes the carrier dial out for the tenant, so a destination is refused unless it
is a valid E.164 number that is not premium-rate, or a ``sip:user@host`` URI whose host is
public (no loopback, private or link-local address literal, no local name): the carrier must
never be pointed at the relay's or its own internal network. The API checks each destination
an agent lists (:func:`destination`); at run time a transfer goes only to one the call's
agent lists for the brain that asked (:func:`allowed_destinations`, :func:`check_transfer`).

    InvalidDestination (ValueError)    not an acceptable destination; the message says why
    TransferRefused                    a transfer the call may not make; ``reason`` is stable:
    ├── "no_transfer_destinations"     the agent lists no destination at all
    ├── "invalid_destination"          what was asked for is no acceptable destination
    └── "destination_not_allowed"      acceptable, but not one the agent lists
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

import phonenumbers

from relay.agent_config import AgentConfig
from relay.urls import LOCAL_NAMES, LOCAL_SUFFIXES, is_public_address, literal_address

MAX_DESTINATION = 256
# How much of a refused destination the call's event log keeps (a webhook may send megabytes).
SHOWN = 120

TOO_LONG = f"A transfer destination has at most {MAX_DESTINATION} characters."
CONTROL = "A transfer destination may not contain control characters."
INVALID_NUMBER = (
    "Not a valid transfer destination; send an E.164 number like +14155550123, "
    "or a sip:user@host URI."
)
PREMIUM_RATE = "Premium-rate numbers are refused as transfer destinations."
SIP_FORM = (
    "A SIP destination is sip:user@host, optionally with :port and ;transport=udp, tcp or tls."
)
NONE_LISTED = "The agent lists no transfer destinations."
NOT_LISTED = "Not one of the agent's transfer destinations."
SIP_NOT_PUBLIC = (
    "A SIP destination must name a public host; loopback, private, link-local and "
    "reserved addresses and local names are refused."
)

NO_DESTINATIONS = "no_transfer_destinations"
INVALID = "invalid_destination"
NOT_ALLOWED = "destination_not_allowed"

_SIP = re.compile(
    r"sip:(?P<user>[A-Za-z0-9\-_.!~*'()&=+$,]{1,64})"
    r"@(?P<host>[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<params>;transport=(?:udp|tcp|tls))?",
    re.IGNORECASE,
)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class InvalidDestination(ValueError):
    """A destination no call may be transferred to; ``str()`` is the reason, for the user."""


class TransferRefused(Exception):
    """A transfer a call may not make (see the module doc for ``reason``)."""

    def __init__(self, reason: str, detail: str, to: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.to = to

    def log_message(self) -> str:
        """The line the call's event log gets."""
        return f"transfer to {shown(self.to)} refused: {self.detail}"

    def data(self) -> dict[str, Any]:
        return {"to": shown(self.to), "reason": self.reason}


def destination(value: str) -> str:
    """``value`` as a transfer destination: E.164 (``+14155550123``) or ``sip:user@host``,
    normalised. Raises :class:`InvalidDestination` with the reason."""
    if len(value) > MAX_DESTINATION:
        raise InvalidDestination(TOO_LONG)
    if not value.isprintable():
        raise InvalidDestination(CONTROL)
    if value[:4].lower() == "sip:":
        return _sip(value)
    return _e164(value)


def _e164(value: str) -> str:
    if not value.startswith("+"):
        raise InvalidDestination(INVALID_NUMBER)
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidDestination(INVALID_NUMBER) from exc
    if number.extension or not phonenumbers.is_valid_number(number):
        raise InvalidDestination(INVALID_NUMBER)
    if phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.PREMIUM_RATE:
        raise InvalidDestination(PREMIUM_RATE)
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _sip(value: str) -> str:
    match = _SIP.fullmatch(value)
    if match is None:
        raise InvalidDestination(SIP_FORM)
    user, host, port, params = match.group("user", "host", "port", "params")
    host = host.lower()
    if port is not None and not 0 < int(port) <= 65535:
        raise InvalidDestination(SIP_FORM)
    if not _public_host(host):
        raise InvalidDestination(SIP_NOT_PUBLIC)
    return f"sip:{user}@{host}" + (f":{int(port)}" if port else "") + (params or "").lower()


def _public_host(host: str) -> bool:
    if host.startswith("["):
        try:
            return is_public_address(ipaddress.IPv6Address(host[1:-1]))
        except ValueError as exc:
            raise InvalidDestination(SIP_FORM) from exc
    address = literal_address(host)
    if address is not None:
        return is_public_address(address)
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidDestination(SIP_FORM)
    # A name of one label resolves inside someone's network; an all-digit last label is an
    # address in a spelling literal_address did not take, not a name.
    local = host in LOCAL_NAMES or host.endswith(LOCAL_SUFFIXES)
    return not local and len(labels) > 1 and not labels[-1].isdigit()


def shown(to: str) -> str:
    """A destination as the event log may hold it: bounded, printable (a NUL would not store)."""
    cut = to[:SHOWN]
    text = "".join(c if c.isprintable() else "?" for c in cut)
    return text + ("..." if len(to) > SHOWN else "")


def check_transfer(to: str, allowed: Iterable[str]) -> str:
    """The destination to dial for a transfer to ``to``, if the call may make it (compared
    normalised, so ``+1 415 555 0123`` matches ``+14155550123``); else raises
    :class:`TransferRefused`. ``allowed`` entries that are not acceptable destinations
    (stored before this check existed) allow nothing."""
    permitted = set()
    for entry in allowed:
        try:
            permitted.add(destination(entry))
        except InvalidDestination:
            continue
    if not permitted:
        raise TransferRefused(NO_DESTINATIONS, NONE_LISTED, to)
    try:
        wanted = destination(to)
    except InvalidDestination as exc:
        raise TransferRefused(INVALID, str(exc), to) from exc
    if wanted not in permitted:
        raise TransferRefused(NOT_ALLOWED, NOT_LISTED, to)
    return wanted


def allowed_destinations(voice_mode: str, agent: AgentConfig) -> tuple[str, ...]:
    """Where a call's brain may transfer it: in hosted mode the built-in ``transfer_call``
    tool's ``destinations``, in webhook mode the agent's ``transferDestinations``."""
    if voice_mode != "hosted":
        return tuple(agent.transfer_destinations or ())
    for tool in agent.tools or ():
        if tool.get("name") == "transfer_call" and not tool.get("url"):
            return tuple(tool.get("destinations") or ())
    return ()


__all__ = [
    "InvalidDestination",
    "TransferRefused",
    "allowed_destinations",
    "check_transfer",
    "destination",
    "shown",
]
