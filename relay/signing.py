"""Standard Webhooks signatures (https://www.standardwebhooks.com) for everything we send.

During a secret rotation a request carries one signature per valid secret, space-separated,
as the spec allows; a receiver holding either secret verifies it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from relay.ids import random_hex


@dataclass(frozen=True, slots=True)
class Secrets:
    """A signing secret and, after a rotation, the one it replaced with the moment that one
    stops signing. Which sign is decided when a request is signed, not when this is made."""

    current: str
    previous: str | None = None
    previous_until: datetime | None = None

    def live(self, now: datetime) -> tuple[str, ...]:
        """The secrets that sign a request made at ``now``."""
        until = self.previous_until
        if self.previous and until is not None and until > now:
            return (self.current, self.previous)
        return (self.current,)


def new_message_id() -> str:
    return "msg_" + random_hex(12)


def signature_headers(
    body: str, secrets_: Sequence[str], *, msg_id: str | None = None, now: float | None = None
) -> dict[str, str]:
    msg_id = msg_id or new_message_id()
    ts = datetime.fromtimestamp(int(now if now is not None else time.time()), tz=UTC)
    signatures = [Webhook(secret).sign(msg_id, ts, body) for secret in secrets_]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(ts.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
