"""``relay serve``: one relay process, or ``--workers N`` processes sharing one port.

With N > 1 a parent process migrates the database once, then forks N workers. Each worker
binds the port with ``SO_REUSEPORT`` (the kernel spreads new connections over them), builds
its own app and is a full node with its own id (``RELAY_NODE_ID`` or ``hostname:port``,
then ``/0`` ... ``/N-1``), so the nodes' usual machinery (heartbeats, leases, claims,
commands through PostgreSQL) is all that ties them together: nothing is shared in memory.
A media socket is served by the worker that accepted it.

The parent forwards SIGTERM / SIGINT to the workers and waits for them to drain; a worker
that dies on its own is forked again under the same node id (its restart recovers what it
held, as a restarted single process does). Workers die with the parent (``PR_SET_PDEATHSIG``):
a ``kill -9`` of ``relay serve`` takes its workers with it, as it would take one process.

SQLite allows one writer at a time, and its write queue lives in the process: several
processes on one SQLite file would fight over its lock, so N > 1 is refused there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from aiohttp import web

from relay.app import create_app, drain
from relay.config import Settings
from relay.logs import get_logger
from relay.store.db import Database

log = get_logger("relay.serve")

SQLITE_ONE_WORKER = (
    "--workers {workers}: SQLite allows one writer, so one relay process. Use PostgreSQL "
    "(RELAY_DATABASE_URL=postgresql+asyncpg://...) for several workers."
)
FIXED_PORT = "--workers {workers} needs a fixed port (RELAY_PORT or --port), not 0."
TOO_MANY = "--workers must be between 1 and {most}."
MAX_WORKERS = 64
# A worker that keeps dying is forked again no faster than this.
RESTART_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1


def default_workers(settings: Settings) -> int:
    """One per core on PostgreSQL, one on SQLite."""
    if settings.database_url.startswith("sqlite"):
        return 1
    return max(1, os.cpu_count() or 1)


def refusal(settings: Settings, workers: int) -> str | None:
    """Why ``workers`` cannot serve with ``settings``, or None if they can."""
    if not 1 <= workers <= MAX_WORKERS:
        return TOO_MANY.format(most=MAX_WORKERS)
    if workers > 1 and settings.database_url.startswith("sqlite"):
        return SQLITE_ONE_WORKER.format(workers=workers)
    if workers > 1 and settings.port == 0:
        return FIXED_PORT.format(workers=workers)
    return None


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker ``index``'s settings: its own node id; the parent migrated already."""
    node_id = f"{settings.effective_node_id()}/{index}"
    return settings.model_copy(update={"node_id": node_id, "auto_migrate": False})


def run(settings: Settings, workers: int) -> int:
    """Serve until SIGTERM / SIGINT. Returns the exit status."""
    if workers == 1:
        _serve(settings, reuse_port=False)
        return 0
    if settings.auto_migrate:
        asyncio.run(_migrate(settings))
    return Supervisor(settings, workers).run()


def _serve(settings: Settings, *, reuse_port: bool) -> None:
    asyncio.run(_serve_until_stopped(settings, reuse_port=reuse_port))


async def _serve_until_stopped(settings: Settings, *, reuse_port: bool) -> None:
    """Serve until SIGTERM / SIGINT; then stop listening, let live calls drain (a second
    signal cuts that short), and shut down: requests in flight get ``shutdown_timeout``,
    then cleanup closes the database.

    The drain runs before aiohttp's own shutdown on purpose: from its first step aiohttp
    ignores what open connections send, a caller's audio on a media socket included."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_seconds,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None)
        await site.start()
        print(f"======== Running on {site.name} ========", file=sys.stderr)
        await signalled.wait()
        signalled.clear()
        await site.stop()
        draining = asyncio.ensure_future(drain(app))
        again = asyncio.ensure_future(signalled.wait())
        await asyncio.wait((draining, again), return_when=asyncio.FIRST_COMPLETED)
        for task in (draining, again):
            task.cancel()
        await asyncio.gather(draining, again, return_exceptions=True)
    finally:
        await runner.cleanup()


async def _migrate(settings: Settings) -> None:
    db = Database(settings.database_url, schema=settings.database_schema)
    try:
        await db.migrate()
    finally:
        await db.close()


class Supervisor:
    """The parent of N workers: forks them, forwards the stop signal, forks a dead one again."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.workers):
                self._fork(index)
            while self.children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
                index = self.children.pop(pid, -1)
                if index < 0 or self.stopping:
                    continue
                log.error("worker_died", worker=index, pid=pid, status=status)
                time.sleep(RESTART_SECONDS)
                if not self.stopping:
                    self._fork(index)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _fork(self, index: int) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = index
            log.info("worker_started", worker=index, pid=pid)
            return
        code = 0
        try:
            _die_with_parent()
            # Its own process group: a terminal's Ctrl+C (or `timeout`) signals the parent's
            # group, and the parent passes the signal on once; a second one would cut the
            # worker's drain short.
            os.setpgid(0, 0)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            _serve(worker_settings(self.settings, index), reuse_port=True)
        except KeyboardInterrupt:
            pass
        except BaseException:  # a worker never returns into the parent's loop
            log.exception("worker_failed", worker=index)
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _die_with_parent() -> None:
    """Linux: the kernel sends this process SIGKILL when the parent dies."""
    prctl: Callable[..., int] | None = None
    with contextlib.suppress(OSError, AttributeError):
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above: go now
        os._exit(1)


__all__ = ["Supervisor", "default_workers", "refusal", "run", "worker_settings"]
