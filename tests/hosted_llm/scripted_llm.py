"""A scripted OpenAI-compatible server: ``POST /v1/chat/completions`` on a real local socket,
answering in the real wire format (SSE ``chat.completion.chunk`` lines, ``tool_calls``
deltas split into fragments, a usage chunk, ``data: [DONE]``).

Each request takes the next script from the queue. A script is a list of steps:

    ("text", "Hello")                       one content delta
    ("tool", "name", {"a": 1})              a tool call, its arguments in 3 fragments
    ("sleep", 0.5)                          wait before the next step
    ("wait", asyncio.Event())               wait until the test sets the event
    ("status", 500, "boom")                 answer this HTTP status instead (first step only)
    ("garbage", "not sse")                  write raw bytes
    ("hang",)                               never answer again
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

Step = tuple[Any, ...]


def text(*pieces: str) -> list[Step]:
    return [("text", p) for p in pieces]


class ScriptedLLM:
    def __init__(self) -> None:
        self.scripts: list[list[Step] | Any] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.disconnected: list[int] = []
        self.url = ""

    def add(self, *scripts: list[Step] | Any) -> None:
        """Queue scripts; a callable ``script(body) -> list[Step]`` decides per request."""
        self.scripts.extend(scripts)

    async def start(self, aiohttp_server: Any) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        server = await aiohttp_server(app)
        self.url = str(server.make_url("/v1"))
        return self.url

    def messages(self, index: int = -1) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.requests[index]["messages"]
        return result

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        number = len(self.requests) - 1
        if not self.scripts:
            return web.json_response({"error": {"message": "no script left"}}, status=500)
        script = self.scripts.pop(0)
        steps: list[Step] = script(body) if callable(script) else script
        if steps and steps[0][0] == "status":
            _, status, message = steps[0]
            return web.json_response(
                {"error": {"message": message, "type": "scripted"}}, status=status
            )
        if not body.get("stream"):
            return await self._whole(body, steps)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            await self._stream(resp, body, steps)
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.append(number)
            raise
        return resp

    async def _stream(
        self, resp: web.StreamResponse, body: dict[str, Any], steps: list[Step]
    ) -> None:
        model = body.get("model", "scripted")
        created = int(time.time())

        async def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
            obj = {
                "id": "chatcmpl-scripted",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        await chunk({"role": "assistant", "content": ""})
        calls = 0
        for step in steps:
            kind = step[0]
            if kind == "text":
                await chunk({"content": step[1]})
            elif kind == "tool":
                args = json.dumps(step[2])
                third = max(1, len(args) // 3)
                pieces = [args[:third], args[third : 2 * third], args[2 * third :]]
                await chunk(
                    {
                        "tool_calls": [
                            {
                                "index": calls,
                                "id": f"call_{calls}",
                                "type": "function",
                                "function": {"name": step[1], "arguments": ""},
                            }
                        ]
                    }
                )
                for piece in pieces:
                    await chunk(
                        {"tool_calls": [{"index": calls, "function": {"arguments": piece}}]}
                    )
                calls += 1
            elif kind == "sleep":
                await asyncio.sleep(step[1])
            elif kind == "wait":
                await step[1].wait()
            elif kind == "garbage":
                await resp.write(step[1].encode())
            elif kind == "hang":
                await asyncio.sleep(3600)
        await chunk({}, "tool_calls" if calls else "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "id": "chatcmpl-scripted",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }
            await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()

    async def _whole(self, body: dict[str, Any], steps: list[Step]) -> web.Response:
        content = "".join(s[1] for s in steps if s[0] == "text")
        return web.json_response(
            {
                "id": "chatcmpl-scripted",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "scripted"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            }
        )
