"""Calls: the domain between the HTTP layer and the voice engine.

    lifecycle    the one place a call's status changes (queued -> ... -> completed | failed)
    event_log    the call's event log, line by line
    inbound      opening a call for a media transport: the row, the frozen agent, the token
    outbound     the dialler: placing calls through a carrier, ringing, no answer
    media        a carrier's media socket, from its handshake to the call's recorded end
    live         calls this process runs: the engine's sink, and the one writer of an end
    records      the sink's writes: transcript, turn metrics, events, state; ``end_call``
    recordings   recording rows, encoding, retention
    intelligence post-call summary, sentiment, extraction
    recovery     leases and heartbeats: what happens to a dead node's calls

Errors (each carries a stable code or reason the API and the event log show):

    Exception
    ├── CallUnavailable      inbound: no call can be opened or started (``code``)
    ├── IllegalTransition    lifecycle: a status change the state machine refuses
    └── DialFailed           outbound: the carrier could not connect the call (``reason``)
"""
