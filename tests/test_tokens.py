import time

import pytest

from relay.tokens import TokenError, issue, verify

KEY = b"k" * 32


def test_round_trip():
    assert verify(KEY, issue(KEY, "call_1", "media", 60), "media") == "call_1"


@pytest.mark.parametrize(
    ("token_fn", "message"),
    [
        (lambda: issue(b"x" * 32, "call_1", "media", 60), "bad signature"),
        (lambda: issue(KEY, "call_1", "download", 60), "another purpose"),
        (lambda: issue(KEY, "call_1", "media", -5), "expired"),
        (lambda: "garbage", "malformed"),
        (lambda: issue(KEY, "call_1", "media", 60)[:-3] + "AAA", "bad signature"),
    ],
)
def test_refusals(token_fn, message):
    with pytest.raises(TokenError, match=message):
        verify(KEY, token_fn(), "media")


def test_expiry_uses_clock():
    token = issue(KEY, "c", "media", 10)
    assert verify(KEY, token, "media", now=time.time() + 5) == "c"
    with pytest.raises(TokenError):
        verify(KEY, token, "media", now=time.time() + 20)
