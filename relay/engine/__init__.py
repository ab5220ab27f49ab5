"""The voice engine: call sessions, webhook turns, speech engines, audio codecs.

A transport connects a call, then hands it to the engine and pumps audio both ways::

    engine = VoiceEngine(settings)        # one per process; await engine.warm() at startup
    handle = await engine.start_call(setup, line, sink, http)  # your CallerLine and CallSink
    handle.push_audio(pcm, rate)          # every decoded frame, any rate, never blocks
    handle.push_dtmf("5")                 # caller key presses
    handle.caller_hung_up()               # the carrier says the caller left
    end = await handle.wait()             # CallEnd("completed") or CallEnd("failed", reason)

The engine depends on ports only (:mod:`relay.engine.ports`) and on the turn protocol
(:mod:`relay.turns`): it stores nothing and knows no carrier. Whoever started the call
writes what the sink is told and how the call ended (:mod:`relay.calls.live`).

    session    one call: livekit's AgentSession wired to the line, the brain, the sink
    turn       one agent.message round trip and the reply it plans
    speaking   reply text to audio frames, marked for barge-in and metrics
    history    recentHistory and the transcript's segments
    timers     inactivity and maximum duration
    speech     the speech engines (STT, TTS, VAD), one module each

Errors: the engine raises nothing at a caller once a call runs; a failure ends that call
(``CallEnd("failed", "agent_error")``) and never another one. ``start_call`` raises
``ValueError`` for a setup it cannot run.
"""

from relay.engine.engine import VoiceEngine
from relay.engine.ports import CallEnd, CallerLine, CallHandle, CallSetup, CallSink, Segment

__all__ = ["CallEnd", "CallHandle", "CallSetup", "CallSink", "CallerLine", "Segment", "VoiceEngine"]
