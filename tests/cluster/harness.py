"""Real ``relay serve`` processes on one database, for the tests that start, kill and restart
them: several nodes on one PostgreSQL schema (tests/cluster), or one node restarted on SQLite
or PostgreSQL (tests/events/test_crash_recovery.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from relay.store.db import Database

RELAY_SCRIPT = Path(sys.executable).with_name("relay")
RELAY = [str(RELAY_SCRIPT)] if RELAY_SCRIPT.exists() else [sys.executable, "-m", "relay.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def node_env(database: Database, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment every node of one deployment shares (the port is per node)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    out["RELAY_DATABASE_URL"] = database.url
    if not database.is_sqlite:
        async with database.engine.connect() as conn:
            out["RELAY_DATABASE_SCHEMA"] = (
                await conn.execute(text("SELECT current_schema()"))
            ).scalar_one()
    out.update(
        RELAY_DATA_DIR=str(tmp_path / "data"),
        RELAY_ALLOW_PRIVATE_WEBHOOKS="true",
        RELAY_WEBHOOK_RETRY_SCHEDULE="0,100ms,100ms,100ms,100ms,100ms",
        RELAY_OUTBOUND_RING_TIMEOUT_SECONDS="600",
        RELAY_SIGNING_SECRET="several-nodes",
        RELAY_LOG_LEVEL="WARNING",
        RELAY_WORKERS="1",
        RELAY_RATE_LIMIT_PER_SECOND="1000",
        RELAY_RATE_LIMIT_BURST="1000",
    )
    out.update(extra)
    return out


class Node:
    """One ``relay serve`` (with its workers, if asked for) on a port of its own, which it
    keeps when started again."""

    def __init__(self, env: dict[str, str], log: Path, name: str, *args: str) -> None:
        self.port = free_port()
        self.env = {**env, "RELAY_PORT": str(self.port), "RELAY_NODE_ID": name}
        self.name = name
        self.args = args
        self.log = log
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as sink:
            self.proc = await asyncio.create_subprocess_exec(
                *RELAY, "serve", *self.args, env=self.env, stdout=sink, stderr=sink
            )
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                assert self.proc.returncode is None, self.log.read_text()[-3000:]
                try:
                    async with http.get(f"{self.base}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        pytest.fail(f"relay serve ({self.name}) did not start within 60 s")

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(self.proc.wait(), 10) == -signal.SIGKILL

    async def terminate(self, within: float = 60) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), within)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def api(
    http: aiohttp.ClientSession,
    node: Node,
    key: str,
    method: str,
    path: str,
    body: Any = None,
    status: int = 200,
) -> Any:
    async with http.request(
        method, node.base + path, json=body, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


async def until(check: Any, within: float = 10.0, every: float = 0.05) -> Any:
    """Await ``check()`` until it returns something truthy; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        got = await check()
        if got:
            return got
        if loop.time() > deadline:
            pytest.fail(f"not within {within} s: {check}")
        await asyncio.sleep(every)
