"""The voice engine: call sessions, webhook turns, speech engines, audio codecs.

A transport connects a call, then hands it to the engine and pumps audio both ways::

    engine = VoiceEngine(settings)        # one per process; await engine.warm() at startup
    handle = await engine.start_call(setup, line, db, http)   # line: your CallerLine
    handle.push_audio(pcm, rate)          # every decoded frame, any rate, never blocks
    handle.push_dtmf("5")                 # caller key presses
    handle.caller_hung_up()               # the carrier says the caller left
    status, reason = await handle.wait()  # ("completed", None) or ("failed", reason)

When the engine itself ends a call (hangup or transfer chunk, the webhook failure limit,
inactivity, max duration) it has already recorded the end with
:func:`relay.calls.records.end_call`; that helper is idempotent, so a transport can call it
after ``wait()`` for every call and only the first writer changes anything.
"""

from relay.engine.engine import VoiceEngine
from relay.engine.ports import CallerLine, CallHandle, CallSetup

__all__ = ["CallHandle", "CallSetup", "CallerLine", "VoiceEngine"]
