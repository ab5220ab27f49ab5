"""Schemathesis hooks for scripts/schemathesis: bodies it cannot serialize on its own.

The WHIP offer (``POST /media/webrtc``) is ``application/sdp``, which is text: send the
generated string as it is, like ``text/plain``.
"""

import schemathesis

schemathesis.serializer.alias("application/sdp", "text/plain")
