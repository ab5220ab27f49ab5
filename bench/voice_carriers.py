"""The carriers ``bench/voice.py`` can drive calls through besides the sim: a fake Plivo or a
fake Telnyx in the bench's process, each serving its REST API where the relay reaches it and
playing its side of every call over its own media protocol.

* ``plivo``: the number is imported under a project's Plivo account; each call is asked of
  the relay's signed answer webhook, its audio flows over Plivo's audio stream protocol
  (``playAudio``/``clearAudio``).
* ``telnyx``: the number is imported under a project's Telnyx account (its Call Control
  Application); each call starts with a signed ``call.initiated``, the relay answers through
  Call Control (``actions/answer``) and the audio flows over Telnyx's media streaming
  protocol (``media``/``mark``/``clear``).

One small seam, :class:`CarrierSide`: its environment for the relay, a number bound to the
bench's agent, and one call that returns what the caller measured.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from relay.handset import CallReport, SimHandset
from relay.handset.fake_plivo import FakePlivo, PlivoHandset
from relay.handset.fake_telnyx import FakeTelnyx, FakeTelnyxAccount

PLIVO_AUTH_ID, PLIVO_TOKEN = "MA" + "B" * 18, "benchplivotoken" + "0" * 20
CALLER = "+12025550142"
CALL_SECONDS = 300.0  # a call of the bench that has not ended by then has hung


class CarrierSide(Protocol):
    name: str

    def env(self) -> dict[str, str]:
        """What the relay needs to reach this carrier."""

    async def start(self) -> None: ...

    async def number(self, http: aiohttp.ClientSession, agent_id: str) -> str:
        """A number of a project's account at this carrier, bound to ``agent_id``."""

    async def call(
        self, relay_url: str, number: str, lines: Sequence[str | Path], timing: dict[str, Any]
    ) -> CallReport: ...

    async def stop(self) -> None: ...


async def _post(http: aiohttp.ClientSession, path: str, body: dict[str, Any], doing: str) -> Any:
    async with http.post(path, json=body) as resp:
        if resp.status != 201:
            raise RuntimeError(f"{doing}: {await resp.text()}")
        return await resp.json()


async def _import(
    http: aiohttp.ClientSession, provider: str, credentials: dict[str, str], agent_id: str
) -> str:
    account = {"provider": provider, "credentials": credentials}
    added = await _post(http, "/v1/carrier-accounts", account, f"adding the {provider} account")
    number = "+14155550160" if provider == "plivo" else "+13125550160"
    body = {
        "provider": provider,
        "phoneNumber": number,
        "carrierAccountId": added["id"],
        "agentId": agent_id,
    }
    await _post(http, "/v1/numbers/import", body, f"importing the {provider} number")
    return number


class _Served:
    """A fake carrier's REST API on a local port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.runner: web.AppRunner | None = None

    async def serve(self, app: web.Application) -> None:
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class PlivoSide(_Served):
    name = "plivo"

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.fake = FakePlivo(PLIVO_AUTH_ID, PLIVO_TOKEN)  # rents any number it is asked about

    def env(self) -> dict[str, str]:
        return {"RELAY_PLIVO_API_BASE_URL": f"http://127.0.0.1:{self.port}"}

    async def start(self) -> None:
        await self.serve(self.fake.app())

    async def number(self, http: aiohttp.ClientSession, agent_id: str) -> str:
        creds = {"authId": PLIVO_AUTH_ID, "authToken": PLIVO_TOKEN}
        return await _import(http, "plivo", creds, agent_id)

    async def call(
        self, relay_url: str, number: str, lines: Sequence[str | Path], timing: dict[str, Any]
    ) -> CallReport:
        answer = f"{relay_url}/carriers/plivo/voice?authId={PLIVO_AUTH_ID}"
        handset = PlivoHandset(self.fake, answer, self.fake.accounts[PLIVO_AUTH_ID], **timing)
        return await handset.call(number, lines)


class TelnyxSide(_Served):
    name = "telnyx"

    def __init__(self, port: int, timing: dict[str, Any]) -> None:
        super().__init__(port)
        # Every caller talks through the fake's one handset (it keeps no per-call state).
        self.fake = FakeTelnyx(handset=SimHandset("http://unused", "unused", **timing))
        self.account: FakeTelnyxAccount = self.fake.add_account()  # owns any number

    def env(self) -> dict[str, str]:
        return {"RELAY_TELNYX_API_BASE_URL": f"http://127.0.0.1:{self.port}"}

    async def start(self) -> None:
        await self.serve(self.fake.app())

    async def number(self, http: aiohttp.ClientSession, agent_id: str) -> str:
        return await _import(http, "telnyx", self.fake.credentials(self.account), agent_id)

    async def call(
        self, relay_url: str, number: str, lines: Sequence[str | Path], timing: dict[str, Any]
    ) -> CallReport:
        call = await self.fake.place_call(self.account, CALLER, number, list(lines))
        await asyncio.wait_for(call.done.wait(), CALL_SECONDS)
        if call.report is None or not call.client_state:
            raise RuntimeError(f"Telnyx call without media: {call.error or call.hangup_cause}")
        # The report names the call by Telnyx's id; the relay's (for its metrics) is the
        # client_state it answered with.
        relay_id = base64.b64decode(call.client_state).decode()
        return dataclasses.replace(call.report, call_id=relay_id)


def carrier_side(name: str, port: int, timing: dict[str, Any]) -> CarrierSide | None:
    if name == "plivo":
        return PlivoSide(port)
    if name == "telnyx":
        return TelnyxSide(port, timing)
    return None


__all__ = ["CarrierSide", "PlivoSide", "TelnyxSide", "carrier_side"]
