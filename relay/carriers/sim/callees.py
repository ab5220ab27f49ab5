"""The sim carrier's test callees: destinations whose outbound calls end a known way, so a
test, a demo or a benchmark can see every ending without a real phone (as a carrier's test
credentials have magic numbers).

In the fictional NANPA block, with any area code:

* ``+1 NPA 555 0188``: busy at once (``busy``);
* ``+1 NPA 555 0189``: the carrier refuses the call (``provider_error``);
* any other number rings and nobody answers, until the ring timeout (``no_answer``).
"""

from __future__ import annotations

import re

from relay.carriers.base import DialFailed

BUSY = re.compile(r"^\+1[2-9][0-9]{2}5550188$")
REFUSED = re.compile(r"^\+1[2-9][0-9]{2}5550189$")
BUSY_DETAIL = "The sim callee's line was busy."
REFUSED_DETAIL = "The sim carrier refused the call (a sim test number that always fails)."


def refuse(to_number: str) -> None:
    """Raise the :class:`DialFailed` a sim test callee ends with at dial time, if any."""
    if BUSY.match(to_number):
        raise DialFailed("busy", BUSY_DETAIL)
    if REFUSED.match(to_number):
        raise DialFailed("provider_error", REFUSED_DETAIL)


__all__ = ["BUSY", "REFUSED", "refuse"]
