"""``GET /v1/voices``: what this relay can speak and hear, and the check every agent and
inline call's ``voice``, ``language``, ``stt`` and ``tts`` pass (422 with the choices,
instead of a setting the engine would silently ignore)."""

from __future__ import annotations

from pydantic import Field

from relay.api.routing import Context, Router
from relay.api.schema import APIModel, OutModel
from relay.config import Settings
from relay.engine.speech import voices
from relay.errors import ValidationFailed

router = Router()
TAG = "Voices"


class VoiceOut(APIModel):
    id: str = Field(description="What `voice` takes on an agent or an inline call.")
    engine: str = Field(description="The `tts` engine that speaks it.")
    language: str = Field(description="BCP 47 tag.")
    name: str


class RecognizerOut(APIModel):
    engine: str = Field(description="What `stt` takes.")
    model: str
    languages: list[str] = Field(description="Primary language subtags it hears.")


class VoiceList(OutModel):
    object: str = "list"
    data: list[VoiceOut]
    recognizers: list[RecognizerOut]
    languages: list[str] = Field(
        description="What `language` takes: a recognizer hears it and a voice speaks it."
    )


@router.route(
    "GET",
    "/v1/voices",
    summary="List the voices, recognizers and languages of this relay",
    tag=TAG,
    response=VoiceList,
    errors=(401, 403, 429),
)
async def list_voices(ctx: Context) -> VoiceList:
    """Only what is installed on this relay: a voice whose package or binary is missing is
    not listed, and an agent cannot ask for it."""
    return VoiceList(
        data=[
            VoiceOut(id=v.id, engine=v.engine, language=v.language, name=v.name)
            for v in voices.voices()
        ],
        recognizers=[
            RecognizerOut(engine=r.engine, model=r.model, languages=list(r.languages))
            for r in voices.recognizers()
        ],
        languages=voices.languages(),
    )


def check_speech(
    settings: Settings, *, voice: str | None, language: str, stt: str | None, tts: str | None
) -> None:
    """422 unless this relay can hold a call with these settings."""
    try:
        voices.choose(
            voice=voice,
            language=language,
            stt=stt,
            tts=tts,
            default_stt=settings.stt,
            default_tts=settings.tts,
        )
    except voices.SpeechUnavailable as exc:
        raise ValidationFailed(
            str(exc),
            code=exc.code,
            field=exc.field,
            details=[
                {"field": exc.field, "code": exc.code, "message": str(exc), "choices": exc.choices}
            ],
        ) from exc


__all__ = ["check_speech", "router"]
