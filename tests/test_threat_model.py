"""THREAT_MODEL.md names the test behind each claim; every test it names must exist, so a
renamed or deleted test cannot leave a claim standing on nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.update(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.MULTILINE))
    return names


def _named_in_threat_model() -> tuple[set[str], set[str]]:
    text = (ROOT / "THREAT_MODEL.md").read_text()
    # A name may be wrapped inside its backticks ("test_x.py::\n  test_y").
    spans = [re.sub(r"\s+", "", span) for span in re.findall(r"`([^`]*)`", text)]
    tests = {m for span in spans for m in re.findall(r"\b(test_\w+)\b(?!\.py)", span)}
    files = {m for span in spans for m in re.findall(r"(tests/[\w/]+\.py)", span)}
    return tests, files


def test_every_test_the_threat_model_names_exists():
    tests, files = _named_in_threat_model()
    assert len(tests) > 40  # the parse found the names, not nothing
    assert sorted(tests - _defined_tests()) == []
    assert sorted(f for f in files if not (ROOT / f).exists()) == []
