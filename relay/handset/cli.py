"""``relay phone call``: ring a number on the sim carrier and talk to its agent.

    relay phone call +14155550142 --say "I'd like to book a table." --say "Tomorrow at seven."

With ``--carrier twilio`` the handset is Twilio instead: it posts the signed voice webhook a
Twilio number's call makes (with the account's auth token, ``--auth-token`` or
``RELAY_TWILIO_AUTH_TOKEN``), runs the TwiML the relay answers and talks over Media Streams,
so the relay's whole Twilio path runs on one machine.

Each ``--say`` (spoken with Piper, or espeak with ``--voice espeak``), ``--wav`` (a 16-bit
WAV file) and ``--dtmf`` (keys) is one turn, in the order given. The handset waits for the
agent's answer before the next turn (or barges in ``--barge-in-after-ms`` into it), prints
what it heard with the time from the end of your speech to the agent's first audio, and
hangs up after the last answer. Exit status: 0 the call ran, 2 the relay refused it.

``--carrier plivo`` rings a Plivo number as Plivo would: the call is asked of the relay's
answer webhook (``/carriers/plivo/voice?authId=...``), signed with the account's auth token
(``--plivo-auth-id``/``--plivo-auth-token`` or ``PLIVO_AUTH_ID``/``PLIVO_AUTH_TOKEN``), and
its audio flows over Plivo's audio stream protocol (:mod:`relay.handset.fake_plivo`). It
needs no API key: the signature is what the relay checks. ``--public-url`` is the URL the
relay signs against (``RELAY_PUBLIC_URL``) when it differs from ``--relay``.

``--carrier telnyx`` is Telnyx's side of a call to a number of a project's Telnyx account:
the handset serves a fake Telnyx REST API where the relay expects Telnyx
(``--telnyx-api-url``, default ``RELAY_TELNYX_API_BASE_URL``, which must be a local
``http://127.0.0.1:PORT``), sends ``call.initiated`` signed with the account's Ed25519 key
(``--telnyx-signing-key``: the private key's 32 bytes, base64, whose public key the account
was added with), and when the relay answers with Call Control it opens the media stream and
talks Telnyx's media protocol (:mod:`relay.handset.fake_telnyx`). ``--telnyx-api-key`` and
``--telnyx-connection-id`` are the account's (``TELNYX_*`` in the environment).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from relay.config import Settings


class _Turns(argparse.Action):
    """Keeps --say, --wav and --dtmf in one list, in the order they were given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        turns = list(getattr(namespace, "turns", None) or [])
        turns.append((self.const, values))
        namespace.turns = turns


def add_phone_call_command(phone_sub: Any) -> None:
    call = phone_sub.add_parser(
        "call", help="call a number as a simulated handset and print what the agent says"
    )
    call.add_argument("number", help="the number to call, E.164 (+14155550142)")
    call.add_argument("--say", action=_Turns, const="say", dest="turns", metavar="TEXT")
    call.add_argument("--wav", action=_Turns, const="wav", dest="turns", metavar="FILE")
    call.add_argument("--dtmf", action=_Turns, const="dtmf", dest="turns", metavar="KEYS")
    call.add_argument(
        "--barge-in-after-ms",
        type=int,
        metavar="N",
        help="speak the next turn N ms after the agent starts answering",
    )
    call.add_argument("--relay", help="the relay's URL (default: RELAY_PUBLIC_URL or local)")
    call.add_argument("--key", help="a secret API key of the number's project (or RELAY_KEY)")
    call.add_argument(
        "--carrier",
        choices=("sim", "twilio", "plivo", "telnyx"),
        default="sim",
        help="how the call reaches the relay: the sim carrier, or as Twilio, Plivo or Telnyx would",
    )
    call.add_argument("--account-sid", help="twilio: the AccountSid (RELAY_TWILIO_ACCOUNT_SID)")
    call.add_argument("--auth-token", help="twilio: its auth token (RELAY_TWILIO_AUTH_TOKEN)")
    call.add_argument("--from", dest="from_number", default="+15005550006", help="caller id")
    call.add_argument("--voice", choices=("piper", "espeak"), default="piper")
    call.add_argument("--no-listen", action="store_true", help="timings only, no transcripts")
    call.add_argument("--json", action="store_true", help="print the call report as JSON")
    call.add_argument(
        "--plivo-auth-id", default=os.environ.get("PLIVO_AUTH_ID", ""), help="plivo: the auth id"
    )
    call.add_argument(
        "--plivo-auth-token", default=os.environ.get("PLIVO_AUTH_TOKEN", ""), help="its token"
    )
    env = os.environ.get
    call.add_argument("--telnyx-api-key", default=env("TELNYX_API_KEY", ""), help="telnyx")
    call.add_argument(
        "--telnyx-connection-id", default=env("TELNYX_CONNECTION_ID", ""), help="its app id"
    )
    call.add_argument(
        "--telnyx-signing-key", default=env("TELNYX_SIGNING_KEY", ""), help="Ed25519, base64"
    )
    call.add_argument("--telnyx-api-url", help="where the relay reaches Telnyx (local)")
    call.add_argument("--public-url", help="the relay's RELAY_PUBLIC_URL (default: --relay)")
    call.set_defaults(func=cmd_phone_call, turns=[])


def _plivo_handset(args: argparse.Namespace, relay_url: str, **options: Any) -> Any:
    from relay.handset.fake_plivo import FakePlivo, PlivoHandset

    fake = FakePlivo(args.plivo_auth_id, args.plivo_auth_token)
    public = (args.public_url or relay_url).rstrip("/")
    fake.deliver_to = (public, relay_url.rstrip("/"))
    answer = f"{public}/carriers/plivo/voice?authId={args.plivo_auth_id}"
    return PlivoHandset(fake, answer, fake.accounts[args.plivo_auth_id], **options)


def cmd_phone_call(args: argparse.Namespace) -> int:
    # Here, not at the top: the handset imports the voice engine (seconds); other commands don't.
    from relay.handset.voice import Dtmf, HandsetError, Line, SimHandset

    settings = Settings()
    relay_url = args.relay or settings.effective_public_url()
    lines: list[Line] = []
    for kind, value in args.turns:
        lines.append(Dtmf(value) if kind == "dtmf" else Path(value) if kind == "wav" else value)
    if args.carrier == "twilio":
        sid = args.account_sid or settings.twilio_account_sid
        token = args.auth_token or settings.twilio_auth_token
        if not (sid and token):
            print("error: give --account-sid and --auth-token (or RELAY_TWILIO_*)", file=sys.stderr)
            return 2
        if not args.json:
            print(f"calling {args.number} as Twilio through {relay_url}", flush=True)
        try:
            report = asyncio.run(_as_twilio(args, relay_url, sid, token, lines))
        except HandsetError as exc:
            print(f"error: {exc} ({exc.code})", file=sys.stderr)
            return 2
        return _print(report, args.json)
    if args.carrier == "telnyx":
        if not (args.telnyx_api_key and args.telnyx_connection_id and args.telnyx_signing_key):
            print(TELNYX_NEEDS, file=sys.stderr)
            return 2
        api_url = args.telnyx_api_url or settings.telnyx_api_base_url
        if not api_url:
            print("error: give --telnyx-api-url (RELAY_TELNYX_API_BASE_URL)", file=sys.stderr)
            return 2
        if not args.json:
            print(f"calling {args.number} as Telnyx through {relay_url}", flush=True)
        try:
            report = asyncio.run(_as_telnyx(args, relay_url, api_url, lines))
        except HandsetError as exc:
            print(f"error: {exc} ({exc.code})", file=sys.stderr)
            return 2
        return _print(report, args.json)
    key = args.key or os.environ.get("RELAY_KEY")
    if args.carrier == "plivo" and not (args.plivo_auth_id and args.plivo_auth_token):
        print("error: --carrier plivo needs the account's auth id and token", file=sys.stderr)
        return 2
    if not key and args.carrier == "sim":
        print("error: give --key or set RELAY_KEY (a secret key, sk_...)", file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "from_number": args.from_number,
        "voice": args.voice,
        "listen": not args.no_listen,
    }
    if args.carrier == "plivo":
        handset = _plivo_handset(args, relay_url, **options)
    else:
        handset = SimHandset(relay_url, key or "", **options)
    if not args.json:
        print(f"calling {args.number} through {relay_url}", flush=True)
    try:
        report = asyncio.run(
            handset.call(args.number, lines, barge_in_after_ms=args.barge_in_after_ms)
        )
    except HandsetError as exc:
        print(f"error: {exc} ({exc.code})", file=sys.stderr)
        return 2
    return _print(report, args.json)


async def _as_twilio(
    args: argparse.Namespace, relay_url: str, sid: str, token: str, lines: list[Any]
) -> Any:
    """The call as Twilio places it (the fake Twilio's side), ``lines`` said on it."""
    import aiohttp

    from relay.handset.fake_twilio import FakeTwilio
    from relay.handset.fake_twilio_voice import Callee, FakeCallRefused
    from relay.handset.voice import HandsetError

    twilio = FakeTwilio(sid, token)
    caller = Callee(lines, voice=args.voice, listen=not args.no_listen)
    async with aiohttp.ClientSession() as http:
        try:
            call = await twilio.voice.call_in(
                http, relay_url, args.number, args.from_number, caller
            )
        except FakeCallRefused as exc:
            raise HandsetError(str(exc), "call_refused") from exc
        except aiohttp.ClientError as exc:
            raise HandsetError(f"cannot reach the relay at {relay_url}: {exc}") from exc
    if call.report is None:
        raise HandsetError("the media stream never opened", "no_media")
    return call.report


async def _as_telnyx(
    args: argparse.Namespace, relay_url: str, api_url: str, lines: list[Any]
) -> Any:
    """The call as Telnyx carries it: its REST API served where the relay reaches Telnyx,
    ``call.initiated`` signed with the account's key, then its media stream."""
    import base64
    import binascii
    from urllib.parse import urlsplit

    import aiohttp
    from aiohttp import web
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from relay.handset.fake_telnyx import FakeTelnyx, FakeTelnyxAccount
    from relay.handset.voice import HandsetError, SimHandset

    try:
        seed = base64.b64decode(args.telnyx_signing_key, validate=True)
        signing_key = Ed25519PrivateKey.from_private_bytes(seed)
    except (binascii.Error, ValueError) as exc:
        raise HandsetError("--telnyx-signing-key is no Ed25519 private key", "bad_key") from exc
    where = urlsplit(api_url)
    if where.hostname not in ("127.0.0.1", "localhost") or not where.port:
        raise HandsetError(f"{api_url} is not a local http://127.0.0.1:PORT", "bad_api_url")
    public = (args.public_url or relay_url).rstrip("/")
    fake = FakeTelnyx(
        handset=SimHandset("http://unused", "unused", voice=args.voice, listen=not args.no_listen)
    )
    local = relay_url.rstrip("/")
    fake.deliver_to = [(public, local), (_ws(public), _ws(local))]
    account = FakeTelnyxAccount(
        args.telnyx_api_key,
        args.telnyx_connection_id,
        messaging_profile_id="",
        signing_key=signing_key,
        call_webhook=f"{public}/carriers/telnyx/call",
    )
    fake.accounts[account.api_key] = account
    runner = web.AppRunner(fake.app())
    await runner.setup()
    try:
        await web.TCPSite(runner, where.hostname, where.port).start()
    except OSError as exc:
        await runner.cleanup()
        raise HandsetError(f"cannot serve Telnyx's API at {api_url}: {exc}", "port_busy") from exc
    try:
        call = await fake.place_call(account, args.from_number, args.number, lines)
        await asyncio.wait_for(call.done.wait(), 600)
        await fake.settle()
    except (OSError, aiohttp.ClientError) as exc:
        raise HandsetError(f"cannot reach the relay at {relay_url}: {exc}") from exc
    finally:
        await runner.cleanup()
    refused = [s for event, _url, s in fake.webhooks if event == "call.initiated" and s != 200]
    if refused:
        code = "invalid_signature" if refused[0] == 403 else "call_refused"
        raise HandsetError(f"the relay answered call.initiated with HTTP {refused[0]}", code)
    if call.report is None:
        why = call.error or f"the relay hung up ({call.hangup_cause})"
        raise HandsetError(f"the media stream never opened: {why}", "no_media")
    return call.report


def _ws(url: str) -> str:
    return url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)


TELNYX_NEEDS = (
    "error: --carrier telnyx needs the account's --telnyx-api-key, --telnyx-connection-id "
    "and --telnyx-signing-key (or TELNYX_API_KEY, TELNYX_CONNECTION_ID, TELNYX_SIGNING_KEY)"
)


def _print(report: Any, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    if report.greeting:
        print(f"agent: {report.greeting}")
    for turn in report.turns:
        print(f"you:   {turn.said}")
        timing = f"+{turn.latency_ms:.0f} ms" if turn.latency_ms is not None else "no answer"
        cut = " (you barged in)" if turn.barged_in else ""
        print(f"agent: [{timing}]{cut} {turn.heard}".rstrip())
    ender = "the agent" if report.ended_by == "relay" else "you"
    print(f"call {report.call_id} ended by {ender} after {report.duration_s:.1f} s")
    return 0
