"""Telnyx's REST API (v2), the requests the relay makes: JSON bodies, ``Authorization:
Bearer <API key>``, answers wrapped in ``{"data": ...}`` and errors as ``{"errors": [{code,
title, detail}]}``. https://developers.telnyx.com/api-reference

Plain HTTP on the relay's own aiohttp stack: the official SDK is a generated client over
httpx (a second HTTP stack, hundreds of modules) for the dozen requests below.
``RELAY_TELNYX_API_BASE_URL`` points it elsewhere (a test double, a proxy).

Errors, translated at this boundary (the API key never appears in one):
    401/403                      CarrierCredentialsInvalid
    5xx, timeout, unreachable    CarrierUnavailable
    any other refusal            CarrierError, ``code`` ``telnyx_<Telnyx's code>``
"""

from __future__ import annotations

import base64
import json as jsonlib
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay.carriers.base import CarrierCredentialsInvalid, CarrierError, CarrierUnavailable

API_BASE_URL = "https://api.telnyx.com"
REFUSED = "Telnyx refused the API key (HTTP {status})."
UNREACHABLE = "Telnyx could not be reached: {why}."
# Telnyx's code for a command on a call that has already ended.
CALL_ENDED = "90018"
# How long each DTMF digit plays (Telnyx takes 100..500 ms; 250 is its default).
DTMF_MILLIS = 250


@dataclass(frozen=True, slots=True)
class TelnyxCredentials:
    """What a Telnyx carrier account holds: the API key (secret), the account's webhook
    public key, the Call Control Application calls use, and optionally a messaging profile."""

    api_key: str
    public_key: str
    connection_id: str
    messaging_profile_id: str | None = None

    def __repr__(self) -> str:  # never the API key, in a traceback or a log line
        return f"TelnyxCredentials(connection_id={self.connection_id!r}, api_key='***')"


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """Where Telnyx streams a call's audio, and how: PCMU both ways, the relay's audio played
    back as RTP (``stream_bidirectional_mode: rtp``)."""

    url: str
    client_state: str | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stream_url": self.url,
            "stream_track": "inbound_track",
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU",
        }
        if self.client_state is not None:
            out["client_state"] = base64.b64encode(self.client_state.encode()).decode()
        return out


class TelnyxTimeout(CarrierUnavailable):
    """Telnyx did not answer within the client's timeout."""


class TelnyxApiError(CarrierError):
    """A refusal with Telnyx's own error code (``telnyx_code``)."""

    def __init__(self, message: str, status: int, telnyx_code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.telnyx_code = telnyx_code
        self.code = f"telnyx_{telnyx_code}" if telnyx_code else "carrier_error"


class TelnyxApi:
    """One API key's client; its session is opened on first use (inside the event loop)."""

    def __init__(self, api_key: str, *, base_url: str = "", timeout: float = 10.0) -> None:
        self._key = api_key
        self.base = (base_url or API_BASE_URL).rstrip("/")
        self.timeout = timeout
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Authorization": f"Bearer {self._key}", "Accept": "application/json"},
            )
        return self._http

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> Any:
        """The answer's ``data`` (None for an empty answer)."""
        try:
            async with self._session().request(
                method, f"{self.base}/v2{path}", json=json, params=params
            ) as resp:
                if resp.status in (401, 403):
                    raise CarrierCredentialsInvalid(REFUSED.format(status=resp.status))
                if resp.status >= 500:
                    raise CarrierUnavailable(UNREACHABLE.format(why=f"HTTP {resp.status}"))
                text = await resp.text()
                body = _json(text)
                if resp.status >= 400:
                    code, detail = _first_error(body)
                    raise TelnyxApiError(
                        f"Telnyx refused {method} {path}: {detail or f'HTTP {resp.status}'}",
                        resp.status,
                        code,
                    )
        except TimeoutError:
            raise TelnyxTimeout(UNREACHABLE.format(why="no answer in time")) from None
        except aiohttp.ClientError as exc:
            raise CarrierUnavailable(UNREACHABLE.format(why=type(exc).__name__)) from None
        return body.get("data") if isinstance(body, dict) else None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- account and numbers ---------------------------------------------------------------

    async def balance(self) -> dict[str, Any]:
        """``GET /v2/balance``: the cheapest authenticated read there is."""
        data = await self.request("GET", "/balance")
        return data if isinstance(data, dict) else {}

    async def call_control_application(self, connection_id: str) -> dict[str, Any]:
        data = await self.request("GET", f"/call_control_applications/{connection_id}")
        return data if isinstance(data, dict) else {}

    async def point_application(self, connection_id: str, name: str, webhook_url: str) -> None:
        """Send the application's call events to ``webhook_url`` (Telnyx's update wants the
        name and the URL together)."""
        body = {"application_name": name, "webhook_event_url": webhook_url}
        await self.request("PATCH", f"/call_control_applications/{connection_id}", json=body)

    async def point_messaging_profile(self, profile_id: str, webhook_url: str) -> None:
        await self.request(
            "PATCH", f"/messaging_profiles/{profile_id}", json={"webhook_url": webhook_url}
        )

    async def phone_numbers(self, phone_number: str) -> list[dict[str, Any]]:
        """The account's numbers with this E.164 value (``filter[phone_number]``)."""
        data = await self.request(
            "GET", "/phone_numbers", params={"filter[phone_number]": phone_number}
        )
        return [d for d in data or () if isinstance(d, dict)]

    async def available(
        self, country: str, area_code: str | None, kind: str = "local", limit: int = 10
    ) -> list[str]:
        # Arrays as Telnyx's SDKs send them: the key repeated, with brackets.
        params = [
            ("filter[country_code]", country),
            ("filter[phone_number_type]", kind),
            ("filter[features][]", "voice"),
            ("filter[features][]", "sms"),
            ("filter[limit]", str(limit)),
        ]
        if area_code:
            params.append(("filter[national_destination_code]", area_code))
        data = await self.request("GET", "/available_phone_numbers", params=params)
        return [str(d["phone_number"]) for d in data or () if isinstance(d, dict)]

    async def order(self, phone_number: str, creds: TelnyxCredentials) -> dict[str, Any]:
        body: dict[str, Any] = {
            "phone_numbers": [{"phone_number": phone_number}],
            "connection_id": creds.connection_id,
        }
        if creds.messaging_profile_id:
            body["messaging_profile_id"] = creds.messaging_profile_id
        data = await self.request("POST", "/number_orders", json=body)
        return data if isinstance(data, dict) else {}

    async def assign(self, number_id: str, creds: TelnyxCredentials) -> None:
        """Route the number's calls to the account's application and its texts to its
        messaging profile (whose webhooks point at the relay)."""
        body = {"connection_id": creds.connection_id}
        await self.request("PATCH", f"/phone_numbers/{number_id}", json=body)
        if creds.messaging_profile_id:
            body = {"messaging_profile_id": creds.messaging_profile_id}
            await self.request("PATCH", f"/phone_numbers/{number_id}/messaging", json=body)

    async def delete_number(self, number_id: str) -> None:
        await self.request("DELETE", f"/phone_numbers/{number_id}")

    # --- calls and texts ------------------------------------------------------------------

    async def answer(self, call_control_id: str, stream: StreamSpec) -> None:
        await self.request("POST", f"/calls/{call_control_id}/actions/answer", json=stream.fields())

    async def dial(
        self,
        *,
        connection_id: str,
        to: str,
        from_: str,
        stream: StreamSpec,
        timeout_secs: int,
        webhook_url: str,
        answering_machine_detection: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "connection_id": connection_id,
            "to": to,
            "from": from_,
            "timeout_secs": timeout_secs,
            "webhook_url": webhook_url,
            "webhook_url_method": "POST",
            **stream.fields(),
        }
        if answering_machine_detection:
            body["answering_machine_detection"] = answering_machine_detection
        data = await self.request("POST", "/calls", json=body)
        return data if isinstance(data, dict) else {}

    async def hangup(self, call_control_id: str) -> None:
        """End the call; one that already ended is not an error."""
        try:
            await self.request("POST", f"/calls/{call_control_id}/actions/hangup", json={})
        except TelnyxApiError as exc:
            if exc.telnyx_code != CALL_ENDED:
                raise

    async def transfer(self, call_control_id: str, to: str) -> None:
        await self.request("POST", f"/calls/{call_control_id}/actions/transfer", json={"to": to})

    async def send_dtmf(self, call_control_id: str, digits: str) -> None:
        """Telnyx plays ``digits`` (0-9, A-D, *, #; ``w`` waits 0.5 s) into the call."""
        body = {"digits": digits, "duration_millis": DTMF_MILLIS}
        await self.request("POST", f"/calls/{call_control_id}/actions/send_dtmf", json=body)

    async def send_message(
        self, *, from_: str, to: str, text: str, webhook_url: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"from": from_, "to": to, "text": text}
        if webhook_url:
            body["webhook_url"] = webhook_url
        data = await self.request("POST", "/messages", json=body)
        return data if isinstance(data, dict) else {}


def _json(text: str) -> Any:
    try:
        return jsonlib.loads(text) if text else None
    except ValueError:
        return None


def _first_error(body: Any) -> tuple[str | None, str]:
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        code = first.get("code")
        detail = first.get("detail") or first.get("title") or ""
        return (str(code) if code is not None else None), str(detail)[:300]
    return None, ""


__all__ = [
    "API_BASE_URL",
    "CALL_ENDED",
    "StreamSpec",
    "TelnyxApi",
    "TelnyxApiError",
    "TelnyxCredentials",
    "TelnyxTimeout",
]
