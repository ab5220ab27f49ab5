"""Prometheus metrics of the whole process, served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

REGISTRY = CollectorRegistry(auto_describe=True)

# Which node answered: several relay processes behind one address each serve their own.
NODE = Info("relay_node", "The relay node (process) serving these metrics.", registry=REGISTRY)
HTTP_REQUESTS = Counter(
    "relay_http_requests_total",
    "HTTP requests answered, by route and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "relay_http_request_seconds",
    "Time to answer an HTTP request, by route.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)

# Voice engine: one observation per caller turn and stage (see relay.engine.session).
_TURN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)


def _turn_histogram(stage: str, what: str) -> Histogram:
    return Histogram(f"relay_turn_{stage}_seconds", what, buckets=_TURN_BUCKETS, registry=REGISTRY)


TURN_STAGES: dict[str, Histogram] = {
    "endpointing": _turn_histogram(
        "endpointing", "End of caller speech to the end of the endpointing silence."
    ),
    "stt": _turn_histogram("stt", "Speech-to-text time for the caller's utterance."),
    "webhook_first_chunk": _turn_histogram(
        "webhook_first_chunk", "agent.message sent to the first reply chunk received."
    ),
    "tts_first_audio": _turn_histogram("tts_first_audio", "Text handed to TTS to its first audio."),
    "relay_overhead": _turn_histogram(
        "relay_overhead", "Turn time that is not VAD, STT, webhook or TTS time."
    ),
    "e2e": _turn_histogram(
        "e2e", "End of caller speech to the first agent audio frame written to the line."
    ),
}
