"""The engines by name: the names settings accept are the names the registry makes."""

from __future__ import annotations

from typing import get_args

import pytest

from relay.config import Settings
from relay.engine.speech import (
    STT_ENGINES,
    TTS_ENGINES,
    LocalSTT,
    LocalTTS,
    local_stt,
    local_tts,
)


def test_every_engine_settings_accept_is_registered():
    assert set(get_args(Settings.model_fields["stt"].annotation)) == set(STT_ENGINES)
    assert set(get_args(Settings.model_fields["tts"].annotation)) == set(TTS_ENGINES)


def test_an_engine_is_made_by_its_name():
    for name in STT_ENGINES:
        assert isinstance(local_stt(name), LocalSTT)
    for name in TTS_ENGINES:
        tts = local_tts(name, sample_rate=16000)
        assert isinstance(tts, LocalTTS) and tts.sample_rate == 16000


def test_an_unknown_engine_name_is_refused():
    with pytest.raises(ValueError, match="unknown stt 'deepgram'"):
        local_stt("deepgram")
    with pytest.raises(ValueError, match="unknown tts 'elevenlabs'"):
        local_tts("elevenlabs", sample_rate=8000)
