"""Which backend a process uses, and the one shared instance of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hosted_llm.local import LocalBackend
from hosted_llm.openai_compat import OpenAIBackend
from hosted_llm.types import ChatBackend


@dataclass(frozen=True, slots=True)
class LLMConfig:
    """``base_url`` set: an OpenAI-compatible endpoint. Empty: the embedded model."""

    base_url: str = ""
    api_key: str = ""
    model: str = ""
    local_model: str = "qwen-1.5b"
    model_dir: Path | None = None
    threads: int = 2
    cache_mb: int = 1024
    timeout_s: float = 15.0


_shared: dict[LLMConfig, ChatBackend] = {}


def create_backend(config: LLMConfig) -> ChatBackend:
    """A new backend for ``config`` (tests and tools; the relay uses :func:`shared_backend`)."""
    if config.base_url:
        return OpenAIBackend(
            config.base_url, api_key=config.api_key, model=config.model, timeout_s=config.timeout_s
        )
    return LocalBackend(
        config.local_model,
        cache_dir=config.model_dir,
        threads=config.threads,
        cache_mb=config.cache_mb,
        timeout_s=max(config.timeout_s, 30.0),
    )


def shared_backend(config: LLMConfig) -> ChatBackend:
    """The process's backend for ``config``: one embedded model per process, however many
    calls and post-call jobs use it."""
    backend = _shared.get(config)
    if backend is None:
        backend = _shared[config] = create_backend(config)
    return backend
