"""Phone numbers: provisioning through carriers, import, binding to agents, routing.

(The package is ``relay_numbers`` because a top-level ``numbers`` would shadow Python's
standard-library ``numbers`` module, which ``decimal``, ``fractions`` and numpy import.)
"""

from relay_numbers.api import router
from relay_numbers.routing import number_for_inbound

__all__ = ["number_for_inbound", "router"]
