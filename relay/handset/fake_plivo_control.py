"""The fake Plivo's Call API on a live call: hang up (``DELETE Call/{uuid}/``), transfer the A
leg to another answer document (``POST Call/{uuid}/`` with ``legs=aleg`` and ``aleg_url``: the
fake asks that URL, signed, keeps its XML and ends the stream) and play digits (``POST
Call/{uuid}/DTMF/``). Each answers the fake's ``control_error`` instead when that is set, and
404 for a call that is not live. The fake's gate has checked the account by then.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from relay.handset.plivo_line import PlivoMediaLine

if TYPE_CHECKING:
    from relay.handset.fake_plivo import FakePlivo, StreamedCall


class PlivoLiveControl:
    def __init__(self, fake: FakePlivo) -> None:
        self.fake = fake

    async def hang_up(self, request: web.Request) -> web.Response:
        live = self._live_call(request)
        if self.fake.control_error is not None:
            return web.json_response({"error": "internal error"}, status=self.fake.control_error)
        if live is None:
            return web.json_response({"error": "not found"}, status=404)
        live[1].hung_up = True
        await live[0].ws.close()
        return web.Response(status=204)

    def _live_call(self, request: web.Request) -> tuple[PlivoMediaLine, StreamedCall] | None:
        call_uuid = request.match_info["uuid"]
        line = self.fake.live.get(call_uuid)
        call = next((c for c in self.fake.calls if c.call_uuid == call_uuid), None)
        return (line, call) if line is not None and call is not None else None

    async def transfer(self, request: web.Request) -> web.Response:
        live = self._live_call(request)
        if self.fake.control_error is not None:
            return web.json_response({"error": "internal error"}, status=self.fake.control_error)
        if live is None:
            return web.json_response({"error": "call not found"}, status=404)
        body = await request.json()
        if body.get("legs", "aleg") != "aleg" or not body.get("aleg_url"):
            return web.json_response({"error": "aleg_url is required for aleg"}, status=400)
        line, call = live
        form = {"CallUUID": call.call_uuid, "CallStatus": "in-progress", "Event": "Transfer"}
        _, call.after = await self.fake.post_for_text(
            str(body["aleg_url"]), form, self.fake.accounts[request.match_info["auth_id"]]
        )
        call.transferred = True
        await line.ws.close()  # the call leaves its stream for the new document
        return web.json_response(
            {"api_id": str(uuid.uuid4()), "message": "call transferred"}, status=202
        )

    async def dtmf(self, request: web.Request) -> web.Response:
        live = self._live_call(request)
        if self.fake.control_error is not None:
            return web.json_response({"error": "internal error"}, status=self.fake.control_error)
        if live is None:
            return web.json_response({"error": "call not found"}, status=404)
        body = await request.json()
        if not body.get("digits"):
            return web.json_response({"error": "digits is required"}, status=400)
        live[1].digits.append(str(body["digits"]))
        return web.json_response(
            {"api_id": str(uuid.uuid4()), "message": "digits sent"}, status=202
        )
