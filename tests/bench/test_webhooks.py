"""``bench/webhooks.py`` end to end, so the lifecycle webhook benchmark cannot rot: a real
relay subprocess, calls created and ended through its API, every event to a local receiver,
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_DSN

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_short_run_delivers_every_event_once(backend):
    command = [sys.executable, str(ROOT / "bench" / "webhooks.py"), "--backend", backend]
    command += ["--seconds", "2", "--warmup", "1", "--rate", "60", "--concurrency", "4"]
    command += ["--pg-dsn", PG_DSN]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    assert [(r["backend"], r["scenario"]) for r in results] == [
        (backend, "paced"),
        (backend, "max"),
    ]
    for r in results:
        assert r["api_errors"] == {} and r["missing"] == 0 and r["duplicates"] == 0, r
        assert r["events_delivered"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["server_cpu_ms_per_call"] > 0
    paced = results[0]
    # 60 events/s for 2 s: 40 calls of 3 events. Those whose state changed in the window are
    # counted: all but the end of a call created in its last moment.
    assert paced["skipped_calls"] == 0 and paced["events_expected"] == 120
    assert 117 <= paced["events_delivered"] <= 120
    assert "ms per call" in done.stdout
