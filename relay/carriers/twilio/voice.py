"""The TwiML that answers Twilio's voice webhooks.

A call to one of our numbers is answered with ``<Connect><Stream>`` to the relay's Media
Streams socket (:mod:`relay.transports.twilio`), or a polite ``<Say>`` and a hang-up; when
the stream ends, Twilio asks again (``<Connect action>``) and hears ``<Dial>`` if the agent
asked for a transfer (already checked against the agent's destinations), else a hang-up.
"""

from __future__ import annotations

from urllib.parse import quote

from twilio.twiml.voice_response import Connect, VoiceResponse

# Twilio's webhooks on the relay (served by relay.api.carriers.twilio): a number's calls and
# texts, where a call asks what to do once its media stream ended, where outbound legs report.
VOICE_PATH = "/carriers/twilio/voice"
SMS_PATH = "/carriers/twilio/sms"
AFTER_PATH = "/carriers/twilio/voice/after"
STATUS_PATH = "/carriers/twilio/voice/status"
AMD_PATH = "/carriers/twilio/voice/amd"
NOT_IN_SERVICE = "Sorry, the number you have called is not in service. Goodbye."
UNAVAILABLE = "Sorry, no one is available to take your call right now. Please try again later."


def answer_twiml(stream_url: str, token: str, call_id: str, action_url: str) -> str:
    """Connect the call to the relay's media socket. The token rides both in the URL and as
    a ``<Parameter>``, because Twilio may strip query strings from stream URLs."""
    response = VoiceResponse()
    connect = Connect(action=action_url)
    stream = connect.stream(url=f"{stream_url}?token={quote(token)}")
    stream.parameter(name="callId", value=call_id)
    stream.parameter(name="token", value=token)
    response.append(connect)
    return str(response)


def reject_twiml(message: str) -> str:
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)


def after_stream_twiml(transfer_to: str | None) -> str:
    """What the call does once its media stream ended: transfer (to a number, or a ``sip:``
    URI through ``<Sip>``), or hang up."""
    response = VoiceResponse()
    if transfer_to and transfer_to.startswith("sip:"):
        response.dial().sip(transfer_to)
    elif transfer_to:
        response.dial(transfer_to)
    else:
        response.hangup()
    return str(response)


__all__ = [
    "AFTER_PATH",
    "AMD_PATH",
    "NOT_IN_SERVICE",
    "SMS_PATH",
    "STATUS_PATH",
    "UNAVAILABLE",
    "VOICE_PATH",
    "after_stream_twiml",
    "answer_twiml",
    "reject_twiml",
]
