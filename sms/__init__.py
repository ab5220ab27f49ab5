"""SMS: texts to an agent's number go to its webhook as ``agent.message`` with
``channel: "sms"``; the reply goes back as a text. Outbound texts, conversations that span
texts and calls, delivery reports and opt-out compliance live here too.

    inbound.receive      a carrier delivered a text: store it (idempotent), wake its worker
    worker.drain         answer a conversation's texts one at a time, in arrival order
    outbound             store, hand to the carrier, follow the delivery status
    optout               STOP / START / HELP; ``is_opted_out`` for every outbound path
    segmentation         GSM-7 / UCS-2 segments

Its HTTP surface is the API's: :mod:`relay.api.messages` (/v1/messages, /v1/conversations)
and the carriers' webhooks in :mod:`relay.api.carriers`.

Errors a client can cause are :mod:`relay.errors` (one shape for the whole API); a carrier's
failure is :class:`relay.carriers.CarrierError`, recorded on the message as ``errorCode``.
The service of one process is ``app[sms.service.SMS]``.
"""

from sms.optout import is_opted_out, refuse_if_opted_out
from sms.segmentation import Segments, segment

# Kept light on purpose: the Calls API imports ``refuse_if_opted_out`` from here, and the service
# (``sms.service``) pulls in the carriers and the voice engine's turn client.
__all__ = ["Segments", "is_opted_out", "refuse_if_opted_out", "segment"]
