"""``bench/twilio_dial.py --quick`` end to end, so the benchmark cannot rot: a real relay
subprocess placing busy calls through the fake Twilio and taking its status callbacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_DSN

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_quick_run_places_every_call_and_takes_every_callback(backend):
    command = [sys.executable, str(ROOT / "bench" / "twilio_dial.py"), "--quick"]
    command += ["--backend", backend, "--concurrency", "1", "4", "--pg-dsn", PG_DSN]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["backend"] == backend
    assert [r["concurrency"] for r in summary["rounds"]] == [1, 4]
    for r in summary["rounds"]:
        assert r["calls"] == 20
        assert r["callbacks"] == 3 * 20  # initiated, ringing, completed (busy) per call
        assert 0 < r["dial"]["p50_ms"] <= r["dial"]["p99_ms"] <= r["dial"]["max_ms"]
