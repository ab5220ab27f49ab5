"""The webhook turn protocol: POST ``agent.message``, read the reply as it streams.

A reply is ``application/json`` (one object) or ``application/x-ndjson`` (one object per
line, each handed on the moment its line ends). Each object may carry ``text``, ``play``,
``interim``, ``hangup``, ``transfer``, ``dtmf``, ``state`` and ``interruptible``. In a
stream, the first object without ``"interim": true`` closes the turn: later lines are not
read (the turn's timing counts those that had arrived, ``ignored_lines``).

    TurnError                        why a turn got no usable answer (``reason`` is stable)
    ├── reason "connection_failed"   refused, DNS failure, reset before any byte, or the
    │                                address is not public (:mod:`relay.egress`)
    ├── reason "http_status"         a 4xx/5xx answer
    ├── reason "timeout"             no first chunk within the agent's webhookTimeoutMs
    ├── reason "invalid_line"        an NDJSON line that is not a JSON object, or is too long
    ├── reason "invalid_body"        a JSON body that is not JSON / not an object, or too big
    └── reason "stream_broken"       the connection died mid-stream
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yarl

from relay.egress import describe
from relay.signing import signature_headers

MAX_LINE_BYTES = 256 * 1024
MAX_BODY_BYTES = 1024 * 1024
# What one read takes off the socket: a reply is never buffered more than this past a limit.
READ_BYTES = 64 * 1024
USER_AGENT = "conversation-relay/0.1"
MAX_PLAY_URL = 2048
# Stands for a ``play`` clip in the text a reply hands to speech (relay.engine.playback): a
# private-use code point, taken out of every reply's text (relay.engine.turn) so that only
# ``play`` makes one.
PLAY_MARK = "\ue000"


class TurnError(Exception):
    def __init__(self, reason: str, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status


@dataclass(frozen=True, slots=True)
class Chunk:
    """One object of the webhook's reply."""

    text: str = ""
    play: str | None = None  # an audio clip's http(s) URL, played after the text before it
    interim: bool = False
    hangup: bool = False
    transfer: str | None = None
    dtmf: str | None = None
    state: dict[str, Any] | None = None
    interruptible: bool | None = None

    @classmethod
    def parse(cls, obj: Any) -> Chunk:
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        text = obj.get("text", "")
        if not isinstance(text, str):
            raise ValueError("'text' must be a string")
        play = obj.get("play")
        if play is not None and not _valid_play(play):
            raise ValueError(f"'play' must be an http(s) URL of at most {MAX_PLAY_URL} characters")
        state = obj.get("state")
        if state is not None and not isinstance(state, dict):
            raise ValueError("'state' must be an object")
        transfer = obj.get("transfer")
        if transfer is not None and not isinstance(transfer, str):
            raise ValueError("'transfer' must be a phone number string")
        dtmf = obj.get("dtmf")
        if dtmf is not None and (not isinstance(dtmf, str) or not _valid_dtmf(dtmf)):
            raise ValueError("'dtmf' must be a string of 0-9, *, #, w")
        interruptible = obj.get("interruptible")
        return cls(
            text=text,
            play=play,
            interim=obj.get("interim") is True,
            hangup=obj.get("hangup") is True,
            transfer=transfer,
            dtmf=dtmf,
            state=state,
            interruptible=interruptible if isinstance(interruptible, bool) else None,
        )


def _valid_play(url: Any) -> bool:
    if not isinstance(url, str) or not 0 < len(url) <= MAX_PLAY_URL:
        return False
    try:
        parsed = yarl.URL(url)
    except ValueError:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host) and parsed.is_absolute()


def _valid_dtmf(digits: str) -> bool:
    return 0 < len(digits) <= 64 and all(c in "0123456789*#wW" for c in digits)


@dataclass(slots=True)
class TurnTiming:
    sent_at: float = 0.0
    first_chunk_at: float | None = None
    done_at: float | None = None
    # Lines that had arrived after the chunk that closed the turn (not read, not used).
    ignored_lines: int = 0


@dataclass(slots=True)
class TurnRequest:
    url: str
    secrets: Sequence[str]
    timeout_s: float
    payload: dict[str, Any]
    timing: TurnTiming = field(default_factory=TurnTiming)
    # A speculative turn's (relay.engine.speculation): set once the turn is confirmed;
    # a brain does nothing with side effects before it. None: an ordinary turn.
    confirmed: asyncio.Event | None = None


async def stream_turn(
    session: aiohttp.ClientSession, turn: TurnRequest
) -> AsyncGenerator[Chunk, None]:
    """Yield the reply's chunks as they arrive. Raises :class:`TurnError` on any misbehaviour.

    The timeout covers connecting and the first chunk; once chunks flow, each further line
    must arrive within the same timeout (a stalled stream is as bad as a silent one).
    Closing the generator (barge-in) aborts the HTTP request.
    """
    body = json.dumps(turn.payload, separators=(",", ":"), ensure_ascii=False)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signature_headers(body, turn.secrets),
    }
    turn.timing.sent_at = time.perf_counter()
    try:
        async with asyncio.timeout(turn.timeout_s):
            response = await session.post(
                turn.url, data=body.encode(), headers=headers, allow_redirects=False
            )
    except TimeoutError as exc:
        raise TurnError("timeout", f"no response within {turn.timeout_s:g} s") from exc
    except aiohttp.ClientError as exc:
        raise TurnError("connection_failed", describe(exc)) from exc
    async with response:
        if response.status >= 300:
            raise TurnError(
                "http_status", f"webhook answered HTTP {response.status}", status=response.status
            )
        ctype = response.content_type
        if ctype == "application/x-ndjson" or ctype == "application/jsonl":
            async for chunk in _ndjson(response, turn):
                yield chunk
        else:
            yield await _single(response, turn)
    turn.timing.done_at = time.perf_counter()


async def _single(response: aiohttp.ClientResponse, turn: TurnRequest) -> Chunk:
    # The body is the first chunk: it is due within the timeout from sending, however many
    # pieces it arrives in.
    try:
        async with asyncio.timeout(_time_left(turn)):
            raw = await read_body(response, MAX_BODY_BYTES)
    except TimeoutError as exc:
        raise TurnError("timeout", f"no body within {turn.timeout_s:g} s") from exc
    except BodyTooLarge as exc:
        raise TurnError("invalid_body", "body larger than 1 MiB") from exc
    except aiohttp.ClientError as exc:
        raise TurnError("stream_broken", f"{type(exc).__name__}: {exc}") from exc
    turn.timing.first_chunk_at = time.perf_counter()
    try:
        return Chunk.parse(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise TurnError("invalid_body", "the body is not JSON") from exc
    except ValueError as exc:
        raise TurnError("invalid_body", str(exc)) from exc


def _time_left(turn: TurnRequest) -> float:
    return max(0.0, turn.timing.sent_at + turn.timeout_s - time.perf_counter())


class BodyTooLarge(Exception):
    """A response body longer than the reader's limit (nothing past it was buffered)."""


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, however it is framed (one write or many, ``Content-Length`` or
    chunked): :meth:`StreamReader.read` returns only what has arrived, so read to the end.
    Raises :class:`BodyTooLarge` as soon as more than ``limit`` bytes are announced or seen."""
    if response.content_length is not None and response.content_length > limit:
        raise BodyTooLarge(f"Content-Length {response.content_length} > {limit}")
    body = bytearray()
    while data := await response.content.read(min(READ_BYTES, limit + 1 - len(body))):
        body += data
        if len(body) > limit:
            raise BodyTooLarge(f"more than {limit} bytes")
    return bytes(body)


async def _ndjson(response: aiohttp.ClientResponse, turn: TurnRequest) -> AsyncIterator[Chunk]:
    lines = _Lines(response.content)
    number = 0
    while True:
        try:
            async with asyncio.timeout(turn.timeout_s):
                line = await lines.next()
        except TimeoutError as exc:
            what = "first chunk" if number == 0 else f"line {number + 1}"
            raise TurnError("timeout", f"no {what} within {turn.timeout_s:g} s") from exc
        except _LineTooLong as exc:
            raise TurnError("invalid_line", f"line {number + 1} is too long") from exc
        except aiohttp.ClientError as exc:
            raise TurnError("stream_broken", f"{type(exc).__name__}: {exc}") from exc
        if line is None:
            return
        number += 1
        stripped = line.strip()
        if not stripped:
            continue
        if number == 1 or turn.timing.first_chunk_at is None:
            turn.timing.first_chunk_at = time.perf_counter()
        try:
            chunk = Chunk.parse(json.loads(stripped))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise TurnError("invalid_line", f"line {number} is not JSON") from exc
        except ValueError as exc:
            raise TurnError("invalid_line", f"line {number}: {exc}") from exc
        yield chunk
        if not chunk.interim:
            # The first chunk without ``interim`` closes the turn: what else had arrived is
            # counted, and the connection is closed without reading on.
            turn.timing.ignored_lines = lines.pending()
            return


class _LineTooLong(Exception):
    """An NDJSON line longer than :data:`MAX_LINE_BYTES`."""


class _Lines:
    """NDJSON lines off a stream, each at most :data:`MAX_LINE_BYTES` (without its newline).

    Our own reader, not aiohttp's ``readline``: that one's limit is twice the session's read
    buffer (128 KiB in aiohttp 3.10, 512 KiB in 3.14), not the documented 256 KiB, and what it
    raises past it is no error a turn expects (neither ``ValueError`` nor ``ClientError``)."""

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer known to hold no newline
        self._eof = False

    async def next(self) -> bytes | None:
        """The next line, or None at the end of the stream."""
        while True:
            end = self._buffer.find(b"\n", self._searched)
            if end != -1:
                return self._take(end + 1)
            self._searched = len(self._buffer)
            if self._searched > MAX_LINE_BYTES + 1:  # (+1: a "\r" before the newline)
                raise _LineTooLong
            if self._eof:
                return self._take(len(self._buffer)) if self._buffer else None
            data = await self._content.read(READ_BYTES)
            if data:
                self._buffer += data
            else:
                self._eof = True

    def pending(self) -> int:
        """How many non-blank lines have arrived and not been read (without waiting)."""
        self._buffer += self._content.read_nowait(-1)
        return sum(1 for line in bytes(self._buffer).split(b"\n") if line.strip())

    def _take(self, size: int) -> bytes:
        line = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._searched = 0
        if len(line.rstrip(b"\r\n")) > MAX_LINE_BYTES:
            raise _LineTooLong
        return line
