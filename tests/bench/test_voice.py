"""``bench/voice.py --quick`` end to end, so the voice benchmark cannot rot: a real relay
subprocess, a real sim call with real speech, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_DSN

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("database_url", ["", PG_DSN], ids=["sqlite", "postgresql"])
def test_quick_run_measures_one_answered_turn(database_url):
    command = [sys.executable, str(ROOT / "bench" / "voice.py"), "--quick"]
    if database_url:
        command += ["--database-url", database_url]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])

    load = summary["load"]
    assert (load["calls"], load["turns"], load["unanswered"], load["failed_calls"]) == (1, 1, 0, 0)
    assert 0 < load["v2v_p50_ms"] < 10_000
    stages = ("endpointing", "STT", "webhook 1st chunk", "TTS 1st audio", "relay overhead")
    for stage in (*stages, "engine e2e"):
        assert load["stages_ms"][stage]["p50"] is not None, stage
    assert load["stages_ms"]["endpointing"]["p50"] >= 300  # 400 ms endpointing, VAD-estimated
    assert load["frames"] > 50 and load["jitter_p99_ms"] is not None
    assert load["relay_cpu_pct"] > 0 and load["relay_rss_mib"] > 50
    assert load["callers_cpu_pct"] > 0
    assert load["call_warnings"] == 0, load["errors"]
    assert summary["ramp"] == [] and summary["capacity_calls"] is None
    # the relay heard the caller: the first line books a table
    assert any("table" in t.lower() for t in summary["sample_transcripts"])
    assert "voice to voice ms p50" in done.stdout


def test_quick_run_with_two_workers_warms_both_and_compares_the_counts():
    command = [sys.executable, str(ROOT / "bench" / "voice.py"), "--quick", "--workers", "1", "2"]
    command += ["--database-url", PG_DSN]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])

    assert [run["workers"] for run in summary["runs"]] == [1, 2]
    for run in summary["runs"]:
        load = run["load"]
        answered = (load["calls"], load["turns"], load["unanswered"], load["failed_calls"])
        assert answered == (1, 1, 0, 0)
        assert load["call_warnings"] == 0, load["errors"]
    assert "every one of 2 workers ran a call" in done.stdout
    assert "by workers (each against 1 worker(s), same run)" in done.stdout


def test_several_workers_are_refused_on_sqlite():
    command = [sys.executable, str(ROOT / "bench" / "voice.py"), "--quick", "--workers", "2"]
    command += ["--database-url", "sqlite+aiosqlite:///unused.db"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--workers above 1 needs PostgreSQL" in done.stderr


@pytest.mark.parametrize("carrier", ["plivo", "telnyx"])
def test_quick_run_over_a_carriers_media_protocol(carrier):
    """The same call through a fake carrier: its signed webhook, its media protocol."""
    command = [sys.executable, str(ROOT / "bench" / "voice.py"), "--quick", "--carrier", carrier]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["carrier"] == carrier
    load = summary["load"]
    assert (load["turns"], load["unanswered"], load["failed_calls"]) == (1, 0, 0)
    assert 0 < load["v2v_p50_ms"] < 10_000
    # The engine's metrics were found under the relay's call id.
    assert load["stages_ms"]["engine e2e"]["p50"] is not None
    assert load["frames"] > 50 and load["call_warnings"] == 0, load["errors"]
    assert any("table" in t.lower() for t in summary["sample_transcripts"])
