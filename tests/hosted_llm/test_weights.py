"""Joining the embedded model's chunk packages and refusing anything but the pinned bytes."""

from __future__ import annotations

import hashlib
import sys

import pytest

from hosted_llm import ModelChecksumMismatch, ModelUnavailable, ensure_model, weights
from hosted_llm.weights import ModelSpec

PARTS = [b"GGUF" + bytes(range(256)) * 40, b"middle" * 5000, b"tail-bytes"]


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """Three chunk packages on sys.path, as pip would have installed them."""
    site = tmp_path / "site"
    for number, data in enumerate(PARTS, start=1):
        pkg = site / f"fakemodel_part{number}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{number:02d}.bin").write_bytes(data)
        (pkg / "__init__.py").write_text(
            "import os\n"
            "def get_part_path():\n"
            f"    return os.path.join(os.path.dirname(__file__), 'data', 'part{number:02d}.bin')\n"
        )
    monkeypatch.syspath_prepend(str(site))
    yield site
    for number in range(1, len(PARTS) + 1):
        sys.modules.pop(f"fakemodel_part{number}", None)


def register(monkeypatch, sha256: str, parts: int = 3) -> None:
    spec = ModelSpec(
        key="fake",
        filename="fake.gguf",
        module_prefix="fakemodel_part",
        package_prefix="fakemodel-part",
        parts=parts,
        version="0.1.0",
        sha256=sha256,
    )
    monkeypatch.setitem(weights.MODELS, "fake", spec)


GOOD = hashlib.sha256(b"".join(PARTS)).hexdigest()


def test_parts_are_joined_in_order_once(parts, tmp_path, monkeypatch):
    register(monkeypatch, GOOD)
    path = ensure_model("fake", tmp_path / "cache")
    assert path.read_bytes() == b"".join(PARTS)

    def no_rehash(_path):
        raise AssertionError("a verified file was hashed again")

    monkeypatch.setattr(weights, "_hash_file", no_rehash)
    assert ensure_model("fake", tmp_path / "cache") == path


def test_a_changed_file_is_checked_again(parts, tmp_path, monkeypatch):
    register(monkeypatch, GOOD)
    path = ensure_model("fake", tmp_path / "cache")
    path.write_bytes(b"tampered")
    again = ensure_model("fake", tmp_path / "cache")  # rejoined from the packages
    assert again.read_bytes() == b"".join(PARTS)


def test_a_checksum_mismatch_refuses_to_load(parts, tmp_path, monkeypatch):
    register(monkeypatch, "0" * 64)
    with pytest.raises(ModelChecksumMismatch) as caught:
        ensure_model("fake", tmp_path / "cache")
    assert caught.value.code == "model_checksum_mismatch"
    assert "refusing to load" in caught.value.message and GOOD in caught.value.message
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-joined is left behind


def test_a_missing_part_names_the_package_to_install(parts, tmp_path, monkeypatch):
    register(monkeypatch, GOOD, parts=4)
    with pytest.raises(ModelUnavailable, match=r"fakemodel-part4==0\.1\.0 is not installed"):
        ensure_model("fake", tmp_path / "cache")


def test_an_unknown_model_is_refused(tmp_path):
    with pytest.raises(ModelUnavailable, match="qwen-0.5b"):
        ensure_model("gpt-17", tmp_path)
