"""The Plivo XML that answers Plivo's voice callbacks.

A call is answered with a bidirectional ``<Stream>`` to the relay's Plivo media socket
(:mod:`relay.transports.plivo`): ``keepCallAlive`` holds the call on the stream until the
socket closes, mu-law 8 kHz both ways. The media token rides in the stream URL's query and
again in ``extraHeaders`` (Plivo hands those to the socket in its ``start`` event). A
``<Redirect>`` after the stream asks the relay what next once the stream ended: ``<Dial>``
if the agent asked for a transfer, else ``<Hangup>``.
https://www.plivo.com/docs/voice/xml/the-stream-element
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

NOT_IN_SERVICE = "Sorry, the number you have called is not in service. Goodbye."
UNAVAILABLE = "Sorry, no one is available to take your call right now. Please try again later."
CONTENT_TYPE = "audio/x-mulaw;rate=8000"


def _xml() -> Any:
    from plivo import plivoxml  # on first use: it imports lxml

    return plivoxml


def answer_xml(stream_url: str, token: str, call_id: str, after_url: str) -> str:
    """Stream the call to the relay, then ask ``after_url`` what next."""
    px = _xml()
    response = px.ResponseElement()
    response.add(
        px.StreamElement(
            f"{stream_url}?token={quote(token)}",
            bidirectional=True,
            audioTrack="inbound",
            keepCallAlive=True,
            contentType=CONTENT_TYPE,
            extraHeaders=f"callId={call_id},token={token}",
        )
    )
    response.add(px.RedirectElement(after_url))
    return str(response.to_string(pretty=False))


def reject_xml(message: str) -> str:
    px = _xml()
    response = px.ResponseElement()
    response.add(px.SpeakElement(message))
    response.add(px.HangupElement())
    return str(response.to_string(pretty=False))


def after_stream_xml(transfer_to: str | None) -> str:
    """What the call does once its stream ended: transfer (a number, or a ``sip:`` URI
    through ``<User>``), or hang up."""
    px = _xml()
    response = px.ResponseElement()
    if transfer_to:
        dial = px.DialElement()
        if transfer_to.startswith("sip:"):
            dial.add(px.UserElement(transfer_to))
        else:
            dial.add(px.NumberElement(transfer_to.removeprefix("+")))
        response.add(dial)
    else:
        response.add(px.HangupElement())
    return str(response.to_string(pretty=False))


__all__ = [
    "CONTENT_TYPE",
    "NOT_IN_SERVICE",
    "UNAVAILABLE",
    "after_stream_xml",
    "answer_xml",
    "reject_xml",
]
