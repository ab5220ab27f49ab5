"""``bench/web_voice.py --quick`` end to end, so the web-call benchmark cannot rot (it did
once: it broke when bench/voice.py's relay settings began to read ``--carrier``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_measures_web_call_turns():
    command = [sys.executable, str(ROOT / "bench" / "web_voice.py"), "--quick"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    load = summary["load"]
    assert load["calls"] == 1 and load["turns"] == 2, load
    assert 0 < load["v2v_p50_ms"] < 10_000
    assert summary["ramp"] == [] and summary["capacity_calls"] is None
