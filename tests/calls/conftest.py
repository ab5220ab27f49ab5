"""Fixtures for the call tests: the scripted OpenAI-compatible LLM."""

from tests.hosted_llm.conftest import scripted  # noqa: F401
