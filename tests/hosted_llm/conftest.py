"""Fixtures for the built-in LLM tests: a scripted OpenAI-compatible server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.engine.conftest import http, speech_models, sqlite_db, voice  # noqa: F401
from tests.hosted_llm.scripted_llm import ScriptedLLM


@pytest.fixture
async def scripted(aiohttp_server: Any) -> ScriptedLLM:
    llm = ScriptedLLM()
    await llm.start(aiohttp_server)
    return llm
