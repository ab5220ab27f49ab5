"""``bench/sms.py --quick`` end to end, so the SMS benchmark cannot rot: a real relay
subprocess, real texts through its sim carrier to a real webhook, on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_DSN

ROOT = Path(__file__).resolve().parents[2]
# bench/sms.py by path: the name ``sms`` is the relay's own package.
_spec = importlib.util.spec_from_file_location("bench_sms", ROOT / "bench" / "sms.py")
assert _spec is not None and _spec.loader is not None
sms_bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_sms"] = sms_bench  # its dataclasses look their module up
_path = list(sys.path)
_spec.loader.exec_module(sms_bench)
sys.path[:] = _path  # it puts bench/ first, where sms.py would shadow the sms package


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_quick_run_answers_every_text_and_splits_the_time(backend):
    # --quick: 3 s measured after 1 s of warm-up
    command = [sys.executable, str(ROOT / "bench" / "sms.py"), "--quick", "--backend", backend]
    command += ["--scenario", "paced", "--rate", "40", "--conversations", "8", "--pg-dsn", PG_DSN]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    [result] = summary["results"]
    assert (result["backend"], result["scenario"]) == (backend, "paced")
    assert result["errors"] == 0 and result["error_kinds"] == {}
    # 40/s for 3 s: every text sent in the window was answered and counted
    assert result["messages"] == result["sent"] >= 100
    assert 0 < result["webhook_p50_ms"] < result["relay_p50_ms"]
    # the relay's own time (Server-Timing) is part of the round trip this process measured
    assert result["relay_p50_ms"] <= result["total_p50_ms"]
    assert 0 < result["overhead_p50_ms"] <= result["overhead_p99_ms"] <= result["overhead_max_ms"]
    assert result["overhead_p99_ms"] <= result["wire_overhead_p99_ms"]
    assert "relay overhead ms p50" in done.stdout


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("relay;dur=12.5", 0.0125),
        ('db;dur=3, relay;desc="app";dur=0.25', 0.00025),
        ("cache;dur=1", None),
        ("relay;dur=abc", None),
        ("", None),
    ],
)
def test_server_timing_is_read_from_the_relay_entry(header, seconds):
    assert sms_bench.server_timing(header) == seconds
