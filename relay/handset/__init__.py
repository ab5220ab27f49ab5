"""The simulated handset: a client of the relay that calls and texts its numbers as a phone
on the sim carrier would, and speaks the carrier side of the wire protocols a carrier does.

``relay phone call`` and ``relay phone sms`` (:mod:`relay.handset.cli`,
:mod:`relay.handset.sms`) are its command line; tests, ``relay demo`` and ``bench/`` use
:class:`SimHandset` as a library::

    report = await SimHandset("http://127.0.0.1:8080", api_key).call(
        "+14155550142", ["I'd like to book a table.", Dtmf("1"), "Thanks, bye."]
    )

:class:`WebPage` (:mod:`relay.handset.web`) is a web page's side of a web call (WHIP and
WebRTC, as ``/widget/relay-call.js`` speaks them), for tests and ``bench/web_voice.py``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.handset.voice import (
        CallReport,
        Dtmf,
        HandsetError,
        Line,
        SimHandset,
        Turn,
        read_wav,
        synthesize,
        transcribe,
    )
    from relay.handset.web import WebCallRefused, WebPage

__all__ = [
    "CallReport",
    "Dtmf",
    "HandsetError",
    "Line",
    "SimHandset",
    "Turn",
    "WebCallRefused",
    "WebPage",
    "read_wav",
    "synthesize",
    "transcribe",
]


def __getattr__(name: str) -> Any:
    # Loaded when first asked for: the handset imports the voice engine (seconds), and every
    # ``relay`` command imports this package for its ``phone`` subcommands.
    if name in ("WebCallRefused", "WebPage"):
        from relay.handset import web  # aiortc: loaded only by those who make web calls

        return getattr(web, name)
    if name in __all__:
        from relay.handset import voice  # see above: on first use

        return getattr(voice, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
