"""Phone numbers: which number reaches which agent (``/v1/numbers`` is :mod:`relay.api.numbers`).

(The package is ``relay_numbers`` because a top-level ``numbers`` would shadow Python's
standard-library ``numbers`` module, which ``decimal``, ``fractions`` and numpy import.)
"""

from relay_numbers.routing import number_for_inbound

__all__ = ["number_for_inbound"]
