"""What bench/voice.py measures and prints: one step's figures (:class:`Step`), the capacity
rule (:func:`passes`), the report lines, and the worker counts side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import api as harness  # bench/api.py: percentiles

STAGES = [  # (label, key in the engine's per-turn metrics)
    ("endpointing", "endpointingMs"),
    ("STT", "sttMs"),
    ("STT wait", "sttWaitMs"),
    ("webhook 1st chunk", "webhookFirstChunkMs"),
    ("TTS 1st audio", "ttsFirstAudioMs"),
    ("relay overhead", "relayOverheadMs"),
    ("engine e2e", "e2eMs"),
]


def pct(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank), ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(harness._percentile(ordered, q), 1)


@dataclass
class Step:
    calls: int
    turns_per_call: int
    turns: int = 0
    unanswered: int = 0
    failed_calls: int = 0
    call_warnings: int = 0  # warnings and errors in the calls' event logs
    v2v_p50_ms: float | None = None
    v2v_p90_ms: float | None = None
    v2v_p99_ms: float | None = None
    v2v_max_ms: float | None = None
    stages_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # the relay overhead's parts: transcript -> session -> reply -> request, chunk -> TTS,
    # audio -> line (relay.engine.webhook.TurnRecord._overhead)
    overhead_parts_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    overhead_p99_ms: float | None = None
    jitter_p99_ms: float | None = None
    jitter_max_ms: float | None = None
    stalls: int = 0  # gaps of 100 ms or more inside an answer
    premature_turns: int = 0  # webhook turns beyond the lines spoken: a pause taken for an end
    worst_gap: str = ""
    frames: int = 0
    relay_cpu_pct: float = 0.0
    callers_cpu_pct: float = 0.0  # this process
    machine_cpu_pct: float | None = None  # all cores, everything running here
    relay_rss_mib: float = 0.0
    relay_peak_rss_mib: float = 0.0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)


def passes(step: Step, base: Step, factor: float) -> bool:
    if step.unanswered or step.failed_calls or step.v2v_p90_ms is None:
        return False
    return base.v2v_p90_ms is not None and step.v2v_p90_ms <= factor * base.v2v_p90_ms


def ms(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.0f}"


def print_step(name: str, s: Step, *, detail: bool = False, verdict: str = "") -> None:
    print(
        f"  {name}: {s.calls} calls x {s.turns_per_call} turns: answered "
        f"{s.turns - s.unanswered}/{s.calls * s.turns_per_call}; voice to voice ms p50 "
        f"{ms(s.v2v_p50_ms)} p90 {ms(s.v2v_p90_ms)} p99 {ms(s.v2v_p99_ms)}; overhead p99 "
        f"{s.overhead_p99_ms} ms; jitter p99 {s.jitter_p99_ms} ms (max {s.jitter_max_ms}, "
        f"{s.stalls} stalls); premature turn ends {s.premature_turns}; "
        f"call log warnings {s.call_warnings}; "
        f"relay CPU {s.relay_cpu_pct:.0f}%, RSS {s.relay_rss_mib:.0f} MiB; callers CPU "
        f"{s.callers_cpu_pct:.0f}%, machine {s.machine_cpu_pct or 0:.0f}%"
        + (f"  [{verdict}]" if verdict else ""),
        flush=True,
    )
    if s.errors:
        print(f"    errors: {s.errors}", flush=True)
    if s.stalls:
        print(f"    longest gap {s.worst_gap}", flush=True)
    if detail:
        print("    breakdown (engine, ms)      p50     p90     p99")
        for label, _ in STAGES:
            st = s.stages_ms.get(label, {})
            print(f"    {label:<24} {ms(st.get('p50'))}  {ms(st.get('p90'))}  {ms(st.get('p99'))}")
        for part, st in s.overhead_parts_ms.items():
            print(f"      {part:<22} {st.get('p50')}  {st.get('p90')}  {st.get('p99')}")
        print(
            f"    {s.frames} agent frames at the callers, {s.seconds:g} s, peak RSS "
            f"{s.relay_peak_rss_mib:.0f} MiB",
            flush=True,
        )


def print_comparison(summaries: list[dict[str, Any]]) -> None:
    """The worker counts side by side, each against the first."""
    base = summaries[0]
    print(f"\n  by workers (each against {base['workers']} worker(s), same run):")
    for summary in summaries:
        load = summary["load"]
        line = (
            f"    {summary['workers']} worker(s): load step {load['calls']} calls, voice to "
            f"voice p50 {ms(load['v2v_p50_ms']).strip()} ms, p90 "
            f"{ms(load['v2v_p90_ms']).strip()} ms; relay CPU {load['relay_cpu_pct']:.0f}%"
        )
        capacity, first = summary["capacity_calls"], base["capacity_calls"]
        if capacity is not None:
            line += f"; capacity {capacity} calls"
            if first:
                line += f" ({capacity / first:.2f}x)"
        print(line, flush=True)
