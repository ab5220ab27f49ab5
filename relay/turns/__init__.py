"""The turn protocol: one ``agent.message`` in, a reply of chunks out, for voice and SMS.

    envelope   the ``agent.message`` event both channels send (:func:`agent_message`)
    protocol   the webhook's wire: the signed POST, JSON or NDJSON back (:func:`stream_turn`,
               :class:`Chunk`, :class:`TurnError`)
    brain      the seam a turn is answered through (:class:`Brain`): the developer's webhook
               (:class:`WebhookBrain`) or the built-in LLM (:class:`HostedBrain`)
    setup      who a call is between and its agent's settings (:class:`CallSetup`)

Nothing here knows about audio, the database or a carrier: the voice engine and the SMS
worker both sit on top of it.
"""

from relay.turns.brain import Brain, WebhookBrain
from relay.turns.envelope import HISTORY_LIMIT, agent_message
from relay.turns.hosted import HostedBrain, hosted_backend, with_templates
from relay.turns.protocol import (
    PLAY_MARK,
    Chunk,
    TurnError,
    TurnRequest,
    TurnTiming,
    stream_turn,
)
from relay.turns.setup import CallSetup

__all__ = [
    "HISTORY_LIMIT",
    "PLAY_MARK",
    "Brain",
    "CallSetup",
    "Chunk",
    "HostedBrain",
    "TurnError",
    "TurnRequest",
    "TurnTiming",
    "WebhookBrain",
    "agent_message",
    "hosted_backend",
    "stream_turn",
    "with_templates",
]
