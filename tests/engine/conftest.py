"""Fixtures for the speech tests: warm models, cached caller voices, a SQLite call store."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest

from relay.calls.live import CallRunner
from relay.config import Settings
from relay.engine import VoiceEngine, speech
from relay.events import attach
from relay.store.db import Database
from tests.engine.harness import espeak_voice, piper_voice


@pytest.fixture(scope="session")
def speech_models() -> None:
    speech.warm(stt="whisper", tts="piper", vad_silence_s=Settings().early_stt_silence_ms / 1000)


@functools.cache
def _voice(text: str, engine: str) -> np.ndarray:
    return piper_voice(text) if engine == "piper" else espeak_voice(text)


@pytest.fixture(scope="session")
def voice(speech_models: None) -> Callable[..., np.ndarray]:
    """Caller speech for ``text`` (8 kHz, through mu-law), synthesized once per session."""

    def make(text: str, engine: str = "piper") -> np.ndarray:
        return _voice(text, engine)

    return make


@pytest.fixture
async def sqlite_db(tmp_path: Any) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    attach(db)
    await db.migrate()
    yield db
    await db.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def engine(speech_models: None) -> AsyncIterator[CallRunner]:
    """The engine as the calls domain runs it: each call's sink stores what it reports, and
    its end is stored when it is awaited."""
    eng = VoiceEngine(Settings())
    runner = CallRunner(eng, Settings())
    yield runner
    await eng.close()
    await runner.close()
