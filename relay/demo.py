"""``relay demo``: the main job, end to end, on one machine with nothing to configure.

It starts the relay (in this process, on the configured host and port) and the bundled
example webhook (``examples/webhook_aiohttp.py``, on a free local port, verifying every
signature with the demo agent's secret), seeds a demo project, key, agent and sim number,
places a sim call that speaks three lines (or ``--say`` lines), and prints the conversation:
what the caller said, what the agent answered as the caller heard it (transcribed), and the
time from the end of the caller's speech to the agent's first audio, with the relay's own
breakdown of that time. ``--serve`` then keeps the relay running; ``--hosted`` lets the
built-in LLM answer instead of the webhook.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import select

from relay.api.agents import new_webhook_secret
from relay.auth import create_key
from relay.config import Settings
from relay.engine import speech
from relay.handset import CallReport, HandsetError, SimHandset, Turn
from relay.ids import new_id
from relay.logs import configure as configure_logs
from relay.store.db import Database
from relay.store.models import Agent, Number, utcnow
from relay_numbers.keys import sim_key

DEMO_PROJECT = "demo"
DEMO_AGENT = "Demo agent"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "webhook_aiohttp.py"
GREETING = "Thanks for calling the Corner Bistro. How can I help?"
# One sentence each: a pause between sentences can end the caller's turn early.
DEFAULT_LINES = (
    "Hi, what time are you open tonight?",
    "Great, can I book a table for two at seven?",
    "Perfect, thank you, goodbye.",
)
HOSTED_PROMPT = (
    "You answer the phone for the Corner Bistro, a small restaurant. It is open every day from "
    "noon until ten in the evening; the kitchen takes last orders at half past nine. You can "
    "book tables: confirm the party size and time back to the caller. Answer in one or two "
    "short spoken sentences."
)
# The embedded LLM on two busy cores may take seconds per answer.
HOSTED_ANSWER_TIMEOUT_S = 60.0
CALL_END_TIMEOUT_S = 15.0
METRICS_TRIES = 15
EMPTY_LINE = "each --say needs some words"
# (metrics key, label) of the relay's per-turn breakdown, in the order the stages happen.
STAGES = (
    ("endpointingMs", "endpointing"),
    ("sttWaitMs", "STT wait"),
    ("webhookFirstChunkMs", "{brain} first chunk"),
    ("ttsFirstAudioMs", "TTS first audio"),
    ("relayOverheadMs", "relay overhead"),
)


class DemoError(Exception):
    """Something the demo needs is missing or failed; the message says what to do."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    lines: tuple[str, ...] = DEFAULT_LINES
    serve: bool = False
    hosted: bool = False


async def seed(settings: Settings, webhook_url: str) -> tuple[str, Agent, Number]:
    """Idempotent: reuses the demo agent and number; makes a fresh key every run."""
    # Only seeding needs the carrier (the demo module is imported by every `relay` command).
    from relay.carriers import ProvisionRequest
    from relay.carriers.sim import SimCarrier

    db = Database(settings.database_url, schema=settings.database_schema)
    try:
        await db.migrate()
        async with db.session() as session:
            key, row = await create_key(session, DEMO_PROJECT, name="demo")
            agent = (
                await session.execute(
                    select(Agent).where(
                        Agent.project_id == row.project_id,
                        Agent.name == DEMO_AGENT,
                        Agent.deleted_at.is_(None),
                    )
                )
            ).scalar_one_or_none()
            if agent is None:
                agent = Agent(
                    id=new_id("agt"),
                    project_id=row.project_id,
                    name=DEMO_AGENT,
                    voice_mode="webhook",
                    webhook_url=webhook_url,
                    webhook_secret=new_webhook_secret(),
                    webhook_timeout_ms=30000,
                    config={},
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
                session.add(agent)
                await session.flush()
            number = (
                (
                    await session.execute(
                        select(Number).where(
                            Number.agent_id == agent.id, Number.released_at.is_(None)
                        )
                    )
                )
                .scalars()
                .first()
            )
            if number is None:
                taken = frozenset(
                    r[0]
                    for r in await session.execute(
                        select(Number.phone_number).where(Number.released_at.is_(None))
                    )
                )
                got = await SimCarrier().provision(ProvisionRequest("US", None, taken))
                number = Number(
                    id=new_id("num"),
                    project_id=row.project_id,
                    phone_number=got.phone_number,
                    country="US",
                    provider="sim",
                    source="provisioned",
                    carrier_key=sim_key(row.project_id),
                    provider_sid=got.provider_sid,
                    agent_id=agent.id,
                    capabilities=list(got.capabilities),
                    created_at=utcnow(),
                )
                session.add(number)
        return key, agent, number
    finally:
        await db.close()


def banner(settings: Settings, key: str, agent: dict[str, Any], number: Number) -> str:
    base = settings.effective_public_url()
    target = agent["webhookUrl"] if agent["voiceMode"] == "webhook" else "the built-in LLM"
    return f"""
Conversation relay demo is running at {base}
  project  {DEMO_PROJECT}
  API key  {key}        (secret: shown once)
  agent    {agent["id"]}   "{agent["name"]}" -> {target}
  number   {number.phone_number}  ({number.id}, sim carrier)

Try it:
  export RELAY_KEY={key}
  relay phone call {number.phone_number} --relay {base} --say "Do you have a vegan menu?"
  curl -s {base}/v1/agents -H "Authorization: Bearer $RELAY_KEY"
  curl -s {base}/v1/numbers -H "Authorization: Bearer $RELAY_KEY"
  curl -s -X PATCH {base}/v1/agents/{agent["id"]} -H "Authorization: Bearer $RELAY_KEY" \\
       -H 'Content-Type: application/json' -d '{{"greeting": "Hello from the relay"}}'
API docs: {base}/docs    Stop with Ctrl-C.
"""


def load_example() -> ModuleType:
    """The bundled example webhook module, from the source checkout this relay runs from."""
    spec = importlib.util.spec_from_file_location("examples.webhook_aiohttp", EXAMPLE)
    if spec is None or spec.loader is None or not EXAMPLE.is_file():
        raise DemoError(
            f"the bundled example webhook is missing ({EXAMPLE}); "
            "run relay demo from a source checkout (scripts/demo)"
        )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hosted_unavailable(settings: Settings) -> str | None:
    """Why ``--hosted`` cannot run here, or None if the hosted backend is installed."""
    if settings.llm_base_url:
        return None
    # Only --hosted asks: the model's packages are an optional extra.
    from hosted_llm import MODELS, ModelUnavailable
    from hosted_llm.weights import INSTALL_HINT, part_paths

    if importlib.util.find_spec("llama_cpp") is None:
        return f"the embedded LLM (llama-cpp-python) is not installed: {INSTALL_HINT}"
    try:
        part_paths(MODELS[settings.llm_local_model])
    except ModelUnavailable as exc:
        return str(exc)
    return None


async def start_example(secret: str) -> tuple[web.AppRunner, str]:
    """Serve the example webhook on a free loopback port; returns its runner and URL."""
    app: web.Application = load_example().make_app(secret)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}/agent"


async def start_relay(settings: Settings) -> web.AppRunner:
    from relay.app import create_app  # the entry point above the app; imported when it runs

    runner = web.AppRunner(
        create_app(settings), access_log=None, shutdown_timeout=settings.shutdown_timeout_seconds
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        await runner.cleanup()
        raise DemoError(
            f"cannot listen on {settings.host}:{settings.port} ({exc.strerror}); "
            "is another relay running? Choose another with --port"
        ) from exc
    return runner


class Api:
    """The few REST calls the demo makes, with the demo key."""

    def __init__(self, http: aiohttp.ClientSession, base: str, key: str) -> None:
        self.http, self.base = http, base
        self.headers = {"Authorization": f"Bearer {key}"}

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(
            method, self.base + path, json=body, headers=self.headers
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                error = data.get("error", {}) if isinstance(data, dict) else {}
                raise DemoError(
                    f"{method} {path} answered {resp.status}: "
                    f"{error.get('message', data)} ({error.get('code', 'http_error')})"
                )
            return data

    async def ended_call(self, call_id: str) -> dict[str, Any]:
        """The call once it has ended (the relay finishes its records after the hang-up)."""
        deadline = asyncio.get_running_loop().time() + CALL_END_TIMEOUT_S
        while True:
            call: dict[str, Any] = await self.request("GET", f"/v1/calls/{call_id}")
            if call["status"] in ("completed", "failed"):
                return call
            if asyncio.get_running_loop().time() > deadline:
                raise DemoError(f"call {call_id} is still {call['status']} after the hang-up")
            await asyncio.sleep(0.2)


def agent_settings(options: DemoOptions, webhook_url: str | None) -> dict[str, Any]:
    """The demo agent's PATCH for this run (the example's port changes every run)."""
    if options.hosted:
        return {
            "voiceMode": "hosted",
            "systemPrompt": HOSTED_PROMPT,
            "greeting": GREETING,
            "tools": None,
        }
    return {"voiceMode": "webhook", "webhookUrl": webhook_url, "greeting": GREETING}


def breakdown(row: dict[str, Any] | None, brain: str) -> str:
    if row is None:
        return ""
    parts = [
        f"{label.format(brain=brain)} {row[key]:.0f}"
        for key, label in STAGES
        if isinstance(row.get(key), int | float)
    ]
    return f"; relay: {', '.join(parts)} ms" if parts else ""


def conversation(
    report: CallReport, rows: Sequence[dict[str, Any] | None], brain: str
) -> list[str]:
    out = []
    if report.greeting:
        out.append(f"    agent:  {report.greeting}")
    for index, (turn, row) in enumerate(zip(report.turns, rows, strict=True), start=1):
        out.append(f"[{index}] caller: {turn.said}")
        out.append(f"    agent:  {turn.heard or '(nothing heard)'}")
        out.append(f"    {latency(turn)}{breakdown(row, brain)}")
    return out


def latency(turn: Turn) -> str:
    if turn.latency_ms is None:
        return "no answer"
    return f"latency {turn.latency_ms:.0f} ms (end of caller speech -> first agent audio)"


async def warm_speech(settings: Settings) -> None:
    """Load the speech models before the call, so the first turn's latency is a turn's."""
    await speech.run_inference(
        lambda: speech.warm(
            stt=settings.stt, tts=settings.tts, vad_silence_s=settings.early_stt_silence_ms / 1000
        )
    )


async def warm_llm(settings: Settings) -> None:
    """Load the embedded LLM before the call (the relay shares this process's instance)."""
    # Only --hosted loads the model (an optional extra).
    from hosted_llm import LocalBackend
    from relay.turns.hosted import hosted_backend

    backend = hosted_backend(settings)
    if isinstance(backend, LocalBackend):
        await backend.load()


async def speech_rows(api: Api, call_id: str, turns: int) -> list[dict[str, Any] | None]:
    """The relay's stored breakdown of each caller turn that the caller heard an answer to,
    when those line up with the handset's turns. A reply that never reached the line (the
    caller went on speaking after a pause, so the relay dropped it) has no end-to-end time."""
    for _ in range(METRICS_TRIES):  # the last turn's row may land just after the call ends
        metrics = await api.request("GET", f"/v1/calls/{call_id}/metrics")
        rows = [
            row
            for row in metrics["perTurn"]
            if row.get("kind") == "speech" and row.get("e2eMs") is not None
        ]
        if len(rows) >= turns:
            break
        await asyncio.sleep(0.2)
    return list(rows) if len(rows) == turns else [None] * turns


async def failures(api: Api, call: dict[str, Any]) -> list[str]:
    """What went wrong in the call, from its event log (empty when nothing did)."""
    page = await api.request("GET", f"/v1/calls/{call['id']}/events?level=error&limit=20")
    found = [f"{e['source']}: {e['message']}" for e in page["data"]]
    if call["status"] == "failed":
        found.insert(0, f"the call failed ({call.get('failureReason') or 'no reason given'})")
    return found


async def until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def demo(settings: Settings, options: DemoOptions) -> int:
    if not options.lines or any(not line.strip() for line in options.lines):
        raise DemoError(EMPTY_LINE)
    if options.hosted and (why := hosted_unavailable(settings)):
        raise DemoError(f"--hosted needs the built-in LLM: {why}")
    base = settings.effective_public_url()
    key, agent_row, number = await seed(settings, f"{base}/examples/webhook")
    example: web.AppRunner | None = None
    webhook_url = None
    if not options.hosted:
        example, webhook_url = await start_example(agent_row.webhook_secret)
    relay = None
    try:
        relay = await start_relay(settings)
        async with aiohttp.ClientSession() as http:
            api = Api(http, base, key)
            agent = await api.request(
                "PATCH", f"/v1/agents/{agent_row.id}", agent_settings(options, webhook_url)
            )
            brain = "LLM" if options.hosted else "webhook"
            print(f"relay    {base}  ({settings.database_url})")
            print(
                f"agent    {agent['id']} answers with "
                + (
                    f"the built-in LLM ({settings.llm_model or settings.llm_local_model})"
                    if options.hosted
                    else f"the example webhook {webhook_url} (examples/webhook_aiohttp.py)"
                )
            )
            print("loading the models...", flush=True)
            await warm_speech(settings)
            if options.hosted:
                await warm_llm(settings)
            print(f"calling  {number.phone_number} from the sim handset...\n", flush=True)
            handset = SimHandset(
                base,
                key,
                answer_timeout_s=HOSTED_ANSWER_TIMEOUT_S if options.hosted else 20.0,
                greeting_timeout_s=HOSTED_ANSWER_TIMEOUT_S if options.hosted else 10.0,
            )
            try:
                report = await handset.call(number.phone_number, list(options.lines))
            except HandsetError as exc:
                raise DemoError(f"the relay refused the call: {exc} ({exc.code})") from exc
            call = await api.ended_call(report.call_id)
            rows = await speech_rows(api, report.call_id, len(report.turns))
            print("\n".join(conversation(report, rows, brain)))
            ender = "the agent" if report.ended_by == "relay" else "the caller"
            print(
                f"\ncall {call['id']} {call['status']} after {report.duration_s:.1f} s, "
                f"ended by {ender}.  More: GET {base}/v1/calls/{call['id']}"
            )
            problems = await failures(api, call)
            problems += [
                f"turn {i}: no agent audio after the caller spoke"
                for i, turn in enumerate(report.turns, start=1)
                if turn.latency_ms is None
            ]
            if not report.turns:
                problems.append("the call ended before the caller could speak")
            if problems:
                print("\nerror: the demo call did not go as it should:", file=sys.stderr)
                for problem in problems:
                    print(f"  - {problem}", file=sys.stderr)
                return 1
            if not options.serve:
                print("Keep the relay running to try the API: relay demo --serve")
                return 0
            print(banner(settings, key, agent, number), flush=True)
        await until_stopped()
        return 0
    finally:
        if relay is not None:
            await relay.cleanup()
        if example is not None:
            await example.cleanup()


def run_demo(settings: Settings, options: DemoOptions | None = None) -> int:
    settings = settings.model_copy(update={"allow_private_webhooks": True})
    # The conversation is the output; logs stay quiet unless asked for (RELAY_LOG_LEVEL).
    level = settings.log_level if "log_level" in settings.model_fields_set else "WARNING"
    configure_logs(level, json=settings.log_json)
    try:
        return asyncio.run(demo(settings, options or DemoOptions()))
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
