"""The routes carriers call, one module per carrier: inbound calls and texts, delivery reports.

The vendor side of each (signature checks, answer documents, wire formats) is in
:mod:`relay.carriers`; these modules read the request, ask the vendor code, and hand the call
or text to the domain (:mod:`relay.calls.inbound`, :mod:`sms.inbound`).
"""

from relay.api.carriers import plivo, sim, telnyx, twilio

__all__ = ["plivo", "sim", "telnyx", "twilio"]
