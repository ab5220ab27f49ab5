"""Phone numbers: which number reaches which agent (``/v1/numbers`` is :mod:`relay.api.numbers`),
and the carrier accounts numbers belong to (``/v1/carrier-accounts``).

(The package is ``relay_numbers`` because a top-level ``numbers`` would shadow Python's
standard-library ``numbers`` module, which ``decimal``, ``fractions`` and numpy import.)
"""

from relay_numbers.keys import TWILIO_DEPLOYMENT_KEY, plivo_key, sim_key, twilio_key, twilio_keys
from relay_numbers.routing import number_for_inbound, project_number

__all__ = [
    "TWILIO_DEPLOYMENT_KEY",
    "number_for_inbound",
    "plivo_key",
    "project_number",
    "sim_key",
    "twilio_key",
    "twilio_keys",
]
