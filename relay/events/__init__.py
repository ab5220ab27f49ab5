"""Lifecycle events and their webhooks: a durable outbox, delivered signed, retried, in order
(per ``ordering_key``), at least once.

``emit`` only records an event in the caller's transaction: it exists if and only if the
change it reports was committed. :func:`attach` puts the hooks that write it on a database's
sessions; the composition root calls it once. The rest, one idea a module:

* :mod:`relay.events.emitting`: the event types and :func:`emit`;
* :mod:`relay.events.fanout`: the session hooks that write emitted events and make their
  deliveries (one per endpoint that wants each) in the emitting transaction;
* :mod:`relay.events.wire`: one delivery on the wire: the signed request, its outcome, when
  to try again;
* :mod:`relay.events.outbox`: the outbox in SQL: claims (leases), write-backs, released leases;
* :mod:`relay.events.worker`: :class:`DeliveryWorker`, the per-process loop that sends them.
"""

from relay.events.emitting import EVENT_TYPES, Emitted, emit
from relay.events.fanout import attach
from relay.events.outbox import DELIVERY_STATUSES, FAILED, PENDING, SUCCEEDED, release_leases
from relay.events.wire import Outcome, event_body, next_delay, retry_after_seconds
from relay.events.worker import DELIVERY, DeliveryWorker

__all__ = [
    "DELIVERY",
    "DELIVERY_STATUSES",
    "EVENT_TYPES",
    "FAILED",
    "PENDING",
    "SUCCEEDED",
    "DeliveryWorker",
    "Emitted",
    "Outcome",
    "attach",
    "emit",
    "event_body",
    "next_delay",
    "release_leases",
    "retry_after_seconds",
]
