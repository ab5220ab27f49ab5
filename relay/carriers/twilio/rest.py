"""Twilio's official REST client on the relay's own aiohttp session, one per account.

The SDK's own async client uses ``aiohttp.BasicAuth`` (deprecated since aiohttp 3.14) and
hands list-valued fields (``StatusCallbackEvent``) to aiohttp as lists, which aiohttp cannot
form-encode; this one sends the Basic header itself and repeats a list field once per value,
as Twilio expects. ``api_base_url`` points it elsewhere (a test double, a proxy).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import aiohttp


def _form(data: dict[str, Any] | None) -> list[tuple[str, str]] | None:
    if data is None:
        return None
    fields: list[tuple[str, str]] = []
    for name, value in data.items():
        for one in value if isinstance(value, list) else [value]:
            fields.append((name, str(one)))
    return fields


def _http_client(timeout: float) -> Any:
    # On first use: twilio.http imports requests (~80 ms), which a relay without Twilio skips.
    from twilio.http import AsyncHttpClient
    from twilio.http.response import Response

    class AiohttpClient(AsyncHttpClient):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(logging.getLogger("twilio.http_client"), True, timeout)
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

        async def request(
            self,
            method: str,
            url: str,
            params: dict[str, Any] | None = None,
            data: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None,
            auth: tuple[str, str] | None = None,
            timeout: float | None = None,  # noqa: ASYNC109 (the SDK's interface)
            allow_redirects: bool = False,
        ) -> Any:
            headers = dict(headers or {})
            if auth is not None:
                token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
                headers["Authorization"] = f"Basic {token}"
            # No per-request timeout: the session's. (An explicit None would turn it off.)
            limit = aiohttp.ClientTimeout(total=timeout) if timeout else self.session.timeout
            async with self.session.request(
                method.upper(),
                url,
                params=params,
                data=_form(data),
                headers=headers,
                allow_redirects=allow_redirects,
                timeout=limit,
            ) as resp:
                return Response(resp.status, await resp.text(), resp.headers)

        async def close(self) -> None:
            await self.session.close()

    return AiohttpClient()


class TwilioRest:
    """The SDK's ``Client`` for one account, made on first use (it opens an aiohttp
    session, which must happen inside the running event loop)."""

    def __init__(
        self, account_sid: str, auth_token: str, *, api_base_url: str = "", timeout: float = 10.0
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.api_base_url = api_base_url.rstrip("/")
        self.timeout = timeout
        self._client: Any = None
        self._http: Any = None

    def client(self) -> Any:
        if self._client is None:
            from twilio.rest import Client  # on first use, as in _http_client

            self._http = _http_client(self.timeout)
            client = Client(self.account_sid, self.auth_token, http_client=self._http)
            if self.api_base_url:
                client.api.base_url = self.api_base_url
            self._client = client
        return self._client

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = self._client = None


__all__ = ["TwilioRest"]
