"""HTTP API benchmark: a real ``relay serve`` subprocess under closed-loop load.

For each backend (a fresh SQLite file, and/or a fresh schema on the local PostgreSQL) this
starts the relay, creates a key (``relay keys create``) and one agent, then runs two
scenarios: ``GET /v1/agents/{id}`` and ``POST /v1/agents``. ``--concurrency`` workers share
one aiohttp session and send back-to-back requests; the first ``--warmup`` seconds are not
counted. It prints a readable report, then one line of JSON with the same numbers.

    .venv/bin/python bench/api.py                    # both backends, 20 s per scenario
    .venv/bin/python bench/api.py --quick --backend sqlite

The load generator runs on the same machine as the server and competes with it for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
AGENT_BODY = {
    "name": "bench agent",
    "voiceMode": "webhook",
    "webhookUrl": "https://example.com/relay-webhook",
    "greeting": "Hello from the benchmark.",
}
READY_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- process statistics: psutil when it is installed, /proc otherwise --------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (and, with ``--workers``, its workers) has used so
    far."""
    try:
        import psutil

        process = psutil.Process(pid)
        total = 0.0
        for p in [process, *process.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
        return total
    except ImportError:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _machine_cpu_seconds() -> float | None:
    """CPU time all cores have spent busy (not idle or waiting on I/O) since boot."""
    stat = Path("/proc/stat")
    if stat.exists():
        fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK  # minus idle, iowait
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size in MiB; psutil has no peak, /proc has VmHWM."""
    values: dict[str, float] = {}
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024  # kB
    else:
        import psutil

        values["VmRSS"] = values["VmHWM"] = psutil.Process(pid).memory_info().rss / 2**20
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


# --- results ------------------------------------------------------------------------------


@dataclass
class Scenario:
    backend: str
    name: str
    seconds: float
    workers: int = 1  # relay serve --workers
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    exceptions: dict[str, int] = field(default_factory=dict)
    server_cpu_pct: float = 0.0
    server_cpu_ms_per_request: float = 0.0
    server_rss_mib: float = 0.0
    server_peak_rss_mib: float = 0.0
    client_cpu_pct: float = 0.0
    machine_cpu_pct: float | None = None
    other_cpu_pct: float | None = None


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


# --- the server ---------------------------------------------------------------------------


def _relay_command() -> list[str]:
    local = ROOT / ".venv" / "bin" / "relay"
    if local.exists():
        return [str(local)]
    found = shutil.which("relay")
    if found:
        return [found]
    return [sys.executable, "-m", "relay.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _relay_env(database_url: str, schema: str, port: int, workers: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_DATABASE_URL=database_url,
        RELAY_PORT=str(port),
        # Always said: on PostgreSQL `relay serve` would otherwise start one worker per core.
        RELAY_WORKERS=str(workers),
        RELAY_RATE_LIMIT_PER_SECOND="1000000000",
        RELAY_RATE_LIMIT_BURST="1000000000",
        RELAY_LOG_LEVEL="WARNING",
    )
    if schema:
        env["RELAY_DATABASE_SCHEMA"] = schema
    return env


@contextmanager
def _sqlite_database() -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        yield f"sqlite+aiosqlite:///{tmp}/relay.db", ""


@contextmanager
def _postgres_database(dsn: str) -> Iterator[tuple[str, str]]:
    schema = "bench_" + secrets.token_hex(6)

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f"CREATE SCHEMA {schema}"))
    try:
        yield dsn.replace("postgresql://", "postgresql+asyncpg://", 1), schema
    finally:
        asyncio.run(run(f"DROP SCHEMA {schema} CASCADE"))


class Server:
    """``relay serve`` in a subprocess, its stderr kept in a file for when it fails."""

    def __init__(self, env: dict[str, str], port: int, workdir: Path) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "relay-serve.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*_relay_command(), "serve", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                async with session.get(self.base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"relay not ready after {READY_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# --- the load -----------------------------------------------------------------------------

Request = Callable[[aiohttp.ClientSession], Awaitable[int]]


async def _load(
    session: aiohttp.ClientSession,
    request: Request,
    *,
    concurrency: int,
    warmup: float,
    seconds: float,
    server_pid: int,
    result: Scenario,
) -> None:
    """Closed loop: each worker sends its next request when the last one is answered.
    Counted: requests that both start and finish inside the measured window."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    exceptions: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    begin = loop.time()
    measure_from = begin + warmup
    measure_to = measure_from + seconds

    async def worker() -> None:
        while True:
            started = loop.time()
            if started >= measure_to:
                return
            try:
                status: int | str = await request(session)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = "exc"
                if started >= measure_from and loop.time() <= measure_to:
                    exceptions[type(exc).__name__] += 1
            finished = loop.time()
            if started >= measure_from and finished <= measure_to:
                latencies.append(finished - started)
                statuses[str(status)] += 1

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(max(0.0, measure_from - loop.time()))
    cpu_server_0 = _cpu_seconds(server_pid)
    cpu_client_0 = time.process_time()
    cpu_machine_0 = _machine_cpu_seconds()
    wall_0 = time.monotonic()
    await asyncio.sleep(max(0.0, measure_to - loop.time()))
    cpu_server_1 = _cpu_seconds(server_pid)
    cpu_client_1 = time.process_time()
    cpu_machine_1 = _machine_cpu_seconds()
    wall = time.monotonic() - wall_0
    rss, peak = _rss_mib(server_pid)
    await asyncio.gather(*tasks)

    latencies.sort()
    ok = sum(n for s, n in statuses.items() if s.isdigit() and 200 <= int(s) < 300)
    result.requests = len(latencies)
    result.rps = len(latencies) / seconds
    result.p50_ms = _percentile(latencies, 50) * 1000
    result.p90_ms = _percentile(latencies, 90) * 1000
    result.p99_ms = _percentile(latencies, 99) * 1000
    result.max_ms = (latencies[-1] if latencies else 0.0) * 1000
    result.errors = len(latencies) - ok
    result.statuses = dict(sorted(statuses.items()))
    result.exceptions = dict(exceptions)
    result.server_cpu_pct = 100 * (cpu_server_1 - cpu_server_0) / wall
    result.server_cpu_ms_per_request = (
        1000 * (cpu_server_1 - cpu_server_0) / len(latencies) if latencies else 0.0
    )
    result.client_cpu_pct = 100 * (cpu_client_1 - cpu_client_0) / wall
    if cpu_machine_0 is not None and cpu_machine_1 is not None:
        result.machine_cpu_pct = 100 * (cpu_machine_1 - cpu_machine_0) / wall
        result.other_cpu_pct = max(
            0.0, result.machine_cpu_pct - result.server_cpu_pct - result.client_cpu_pct
        )
    result.server_rss_mib = rss
    result.server_peak_rss_mib = peak


async def _bench_backend(
    backend: str, server: Server, key: str, args: argparse.Namespace
) -> list[Scenario]:
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        base_url=server.base, connector=connector, timeout=timeout, headers=headers
    ) as session:
        await server.wait_ready(session)
        async with session.post("/v1/agents", json=AGENT_BODY) as resp:
            if resp.status != 201:
                raise RuntimeError(f"creating the agent: HTTP {resp.status} {await resp.text()}")
            agent_id = (await resp.json())["id"]
        get_path = f"/v1/agents/{agent_id}"
        body = json.dumps(AGENT_BODY).encode()
        post_headers = {"Content-Type": "application/json"}

        async def get_agent(s: aiohttp.ClientSession) -> int:
            async with s.get(get_path) as resp:
                await resp.read()
                return resp.status

        async def create_agent(s: aiohttp.ClientSession) -> int:
            async with s.post("/v1/agents", data=body, headers=post_headers) as resp:
                await resp.read()
                return resp.status

        results = []
        for name, request in (
            ("GET /v1/agents/{id}", get_agent),
            ("POST /v1/agents", create_agent),
        ):
            result = Scenario(backend=backend, name=name, seconds=args.seconds)
            await _load(
                session,
                request,
                concurrency=args.concurrency,
                warmup=args.warmup,
                seconds=args.seconds,
                server_pid=server.proc.pid,
                result=result,
            )
            _print_scenario(result)
            results.append(result)
        return results


class LocalHook:
    """A webhook receiver on a free loopback port (``url``); subclasses answer in ``_handle``."""

    url = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError


async def agent_with_number(http: aiohttp.ClientSession, agent: dict[str, Any]) -> str:
    """Create ``agent`` and bind a new sim number to it; returns the number."""
    async with http.post("/v1/agents", json=agent) as resp:
        if resp.status != 201:
            raise RuntimeError(f"creating the agent: {resp.status} {await resp.text()}")
        agent_id = (await resp.json())["id"]
    async with http.post("/v1/numbers", json={"agentId": agent_id}) as resp:
        if resp.status != 201:
            raise RuntimeError(f"creating the number: {resp.status} {await resp.text()}")
        number: str = (await resp.json())["phoneNumber"]
        return number


def create_key(env: dict[str, str], workdir: Path, *, project: str = "bench") -> str:
    """A secret key for ``project``, made the way an operator makes one (``relay keys create``)."""
    created = subprocess.run(
        [*_relay_command(), "keys", "create", "--project", project, "--name", "bench"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    if created.returncode != 0:
        raise RuntimeError(f"relay keys create failed:\n{created.stderr}")
    return created.stdout.strip().splitlines()[-1]


def run_backend(backend: str, args: argparse.Namespace, workers: int = 1) -> list[Scenario]:
    database = _sqlite_database() if backend == "sqlite" else _postgres_database(args.pg_dsn)
    with database as (url, schema), tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workdir = Path(tmp)
        port = args.port or _free_port()
        env = _relay_env(url, schema, port, workers)
        key = create_key(env, workdir)
        where = url + (f" (schema {schema})" if schema else "")
        print(f"\n[{backend}, {workers} worker(s)] {where}", flush=True)
        server = Server(env, port, workdir)
        try:
            results = asyncio.run(_bench_backend(backend, server, key, args))
            for result in results:
                result.workers = workers
            return results
        except BaseException:
            print(server.log_tail(), file=sys.stderr)
            raise
        finally:
            server.stop()


# --- output -------------------------------------------------------------------------------


def _print_header(args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    print("relay API benchmark")
    print(
        f"  {platform.python_implementation()} {platform.python_version()}, "
        f"aiohttp {aiohttp.__version__}, {platform.system()} {platform.release()}, "
        f"{cores} CPU cores"
    )
    print(
        f"  closed loop: {args.concurrency} concurrent requests, {args.seconds:g} s measured "
        f"per scenario after {args.warmup:g} s of warm-up; rate limit off, log level WARNING"
    )
    print(
        f"  NOTE: the load generator (this process) shares the same {cores} cores with the "
        "server, and so do PostgreSQL and anything else running here: see 'client' and 'other'."
    )
    print(
        "  CPU% is of one core (100% = one core busy, machine max "
        f"{100 * cores}%); 'ms/req' = server CPU time per counted request."
    )


def _print_scenario(r: Scenario) -> None:
    print(
        f"  {r.name:<20} {r.rps:8.1f} req/s   latency ms  p50 {r.p50_ms:7.1f}  "
        f"p90 {r.p90_ms:7.1f}  p99 {r.p99_ms:7.1f}  max {r.max_ms:7.1f}   "
        f"errors {r.errors} of {r.requests}"
    )
    machine = ""
    if r.machine_cpu_pct is not None:
        machine = f"   machine {r.machine_cpu_pct:5.1f}%, other {r.other_cpu_pct or 0.0:5.1f}%"
    print(
        f"  {'':<20} server CPU {r.server_cpu_pct:5.1f}% ({r.server_cpu_ms_per_request:.2f} "
        f"ms/req), RSS {r.server_rss_mib:.1f} MiB (peak {r.server_peak_rss_mib:.1f})   "
        f"client CPU {r.client_cpu_pct:5.1f}%{machine}"
    )
    if r.errors:
        print(f"  {'':<20} statuses {r.statuses}  exceptions {r.exceptions}")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark the relay's HTTP API against a real `relay serve` subprocess."
    )
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql", "both"), default="both", help="default both"
    )
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (50)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured per scenario (20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="uncounted warm-up (2)")
    parser.add_argument("--quick", action="store_true", help="3 s per scenario, for smoke runs")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="relay serve --workers, each in turn (e.g. 1 2; SQLite runs 1)",
    )
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get("RELAY_BENCH_PG_DSN", DEFAULT_PG_DSN),
        help=f"PostgreSQL to use; a schema is made and dropped (default {DEFAULT_PG_DSN})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.seconds = 3.0
    if args.concurrency < 1 or args.seconds <= 0 or args.warmup < 0:
        print("error: --concurrency must be >= 1, --seconds > 0, --warmup >= 0", file=sys.stderr)
        return 2
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    _print_header(args)
    results: list[Scenario] = []
    for backend in backends:
        for workers in args.workers if backend == "postgresql" else [1]:
            results.extend(run_backend(backend, args, workers))
    summary: dict[str, Any] = {
        "benchmark": "relay-api",
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "cpu_count": os.cpu_count(),
        "shared_cores": True,
        "python": platform.python_version(),
        "scenarios": [asdict(r) for r in results],
    }
    for row in summary["scenarios"]:
        for key, value in row.items():
            if isinstance(value, float):
                row[key] = round(value, 2)
    print()
    print(json.dumps(summary, separators=(",", ":")))
    return 1 if any(r.requests == 0 or r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
