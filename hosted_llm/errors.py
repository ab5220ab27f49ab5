"""Everything the built-in LLM can raise. ``code`` is stable; messages are for people.

LLMError                     base; ``code`` names the failure
├── LLMConnectionError       "connection_failed": refused, DNS, reset before an answer
├── LLMStatusError           "http_status": the endpoint answered 4xx/5xx (``status``)
├── LLMTimeout               "timeout": no first token, or a stalled stream
├── LLMResponseError         "invalid_response": an answer that is not the wire format
└── ModelUnavailable         "model_unavailable": the embedded model cannot be loaded
    └── ModelChecksumMismatch  "model_checksum_mismatch": joined weights fail sha256
"""

from __future__ import annotations


class LLMError(Exception):
    code = "llm_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LLMConnectionError(LLMError):
    code = "connection_failed"


class LLMStatusError(LLMError):
    code = "http_status"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class LLMTimeout(LLMError):
    code = "timeout"


class LLMResponseError(LLMError):
    code = "invalid_response"


class ModelUnavailable(LLMError):
    code = "model_unavailable"


class ModelChecksumMismatch(ModelUnavailable):
    code = "model_checksum_mismatch"
