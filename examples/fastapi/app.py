"""An agent webhook in FastAPI: verifies the relay's signature, streams an LLM's words as NDJSON.

Every caller turn and every text reaches ``POST /agent`` as a signed ``agent.message`` event.
Words come from any OpenAI-compatible endpoint (``OPENAI_BASE_URL``), streamed to the relay
a sentence at a time so the caller hears the first one while the rest is being written. The
turn count lives in ``state``, which the relay hands back as ``conversationState`` next turn.
A few phrases show the call controls: "goodbye" hangs up, "operator" (or the key 0) transfers,
"extension 42" sends those digits as DTMF.

    WEBHOOK_SECRET=whsec_... OPENAI_BASE_URL=http://127.0.0.1:8000/v1 \\
        uvicorn app:app --app-dir examples/fastapi --port 8090
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import openai
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = os.environ.get("WEBHOOK_SECRET", "")
if not SECRET.startswith("whsec_"):
    raise SystemExit("set WEBHOOK_SECRET to the agent's webhookSecret (whsec_...)")
MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
OPERATOR = os.environ.get("OPERATOR_NUMBER", "+14155550100")
SYSTEM = (
    "You are Ava, the front desk of the Corner Bistro. Answer in one or two short sentences "
    "that sound natural {how}. This is turn {turn} of the conversation."
)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
GOODBYE = re.compile(r"\b(good ?bye|bye|hang up)\b")

webhook = Webhook(SECRET)
# Reads OPENAI_BASE_URL; a local server needs no real key.
llm = openai.AsyncOpenAI(api_key=os.environ.get("OPENAI_API_KEY", "not-needed"))
app = FastAPI(title="agent webhook")

Chunk = dict[str, Any]


def controls(said: str, keys: str | None, channel: str) -> Chunk | None:
    """Replies that act on the call; None lets the LLM answer."""
    lowered = said.lower()
    if GOODBYE.search(lowered):
        goodbye: Chunk = {"text": "Thanks for calling. Goodbye!"}
        return {**goodbye, "hangup": True} if channel == "voice" else goodbye
    if channel != "voice":
        return None
    if keys == "0" or "operator" in lowered:
        return {"text": "Let me put you through to a person.", "transfer": OPERATOR}
    if keys:
        return {"text": f"You pressed {keys}."}
    extension = re.search(r"extension (\d+)", lowered)
    if extension:
        return {"text": f"Dialling extension {extension[1]}.", "dtmf": extension[1]}
    return None


async def from_llm(event: dict[str, Any], said: str, turn: int) -> AsyncIterator[Chunk]:
    """The LLM's reply, one sentence per chunk, each marked ``interim`` (more follows)."""
    how = "when spoken on the phone" if event["channel"] == "voice" else "in a text message"
    messages: list[Any] = [{"role": "system", "content": SYSTEM.format(how=how, turn=turn)}]
    for entry in event.get("recentHistory", []):
        role = "assistant" if entry["role"] == "agent" else "user"
        messages.append({"role": role, "content": entry["content"]})
    messages.append({"role": "user", "content": said})
    pending = ""
    try:
        stream = await llm.chat.completions.create(
            model=MODEL, messages=messages, stream=True, max_tokens=200
        )
        async for part in stream:
            if part.choices:
                pending += part.choices[0].delta.content or ""
                *sentences, pending = SENTENCE_END.split(pending)
                for sentence in sentences:
                    yield {"text": sentence, "interim": True}
    except openai.OpenAIError:
        pending = "Sorry, I did not catch that. Could you say it again?"
    if pending.strip():
        yield {"text": pending.strip(), "interim": True}


async def ndjson(chunks: AsyncIterator[Chunk], state: dict[str, Any]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield json.dumps(chunk).encode() + b"\n"
    yield json.dumps({"state": state}).encode() + b"\n"  # the last line has no "interim"


@app.post("/agent")
async def agent(request: Request) -> Response:
    body = await request.body()
    try:
        # Checks the HMAC over id, timestamp and body, and that the timestamp is recent.
        event = webhook.verify(body, dict(request.headers))
    except WebhookVerificationError:
        return JSONResponse({"error": "bad signature"}, status_code=401)
    if event.get("event") != "agent.message":
        return JSONResponse({})  # nothing to say to other events
    data, channel = event["data"], event["channel"]
    # voice: data.transcript (what speech-to-text heard) or data.dtmf; sms: data.text
    said = str(data.get("transcript") or data.get("text") or "")
    state = event.get("conversationState") or {}
    turn = int(state.get("turns", 0)) + 1
    next_state = {**state, "turns": turn}
    action = controls(said, data.get("dtmf"), channel)
    if action is not None:
        return JSONResponse({**action, "state": next_state})
    return StreamingResponse(
        ndjson(from_llm(event, said, turn), next_state), media_type="application/x-ndjson"
    )
