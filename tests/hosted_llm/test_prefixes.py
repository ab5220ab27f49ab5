"""Which saved KV state a prompt gets back (hosted_llm/prefixes.py); the model itself is
exercised in test_local_model.py."""

from __future__ import annotations

import numpy as np

from hosted_llm.prefixes import SavedPrefixes, common_prefix


def tokens(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.intc)


def test_common_prefix_counts_leading_equal_tokens():
    assert common_prefix([1, 2, 3, 4], [1, 2, 9]) == 2
    assert common_prefix(tokens(1, 2), [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0


def test_the_entry_sharing_the_longest_prefix_is_found():
    saved = SavedPrefixes(1000)
    saved.put(tokens(1, 2, 3), b"a")
    saved.put(tokens(1, 2, 7, 8), b"b")
    assert saved.best([1, 2, 7, 8, 9]) == (1, 4)
    assert saved.best([1, 2, 3, 4]) == (0, 3)
    assert saved.best([9]) == (-1, 0)
    key, data = saved.take(1)
    assert list(key) == [1, 2, 7, 8] and data == b"b" and len(saved) == 1


def test_a_conversation_keeps_one_entry_as_it_grows():
    saved = SavedPrefixes(1000)
    saved.put(tokens(1, 2), b"x" * 10)
    saved.put(tokens(1, 2, 3, 4), b"y" * 20)
    assert len(saved) == 1 and saved.size_bytes == 20
    saved.put(tokens(1, 2, 5), b"z" * 5)  # another call with the same system prompt
    assert len(saved) == 2


def test_the_least_recently_saved_go_first_past_the_capacity():
    saved = SavedPrefixes(100)
    saved.put(tokens(1), b"a" * 60)
    saved.put(tokens(2), b"b" * 30)
    saved.put(tokens(3), b"c" * 30)
    assert saved.best([1]) == (-1, 0)
    assert saved.best([3])[1] == 1 and saved.size_bytes == 60
    saved.put(tokens(4), b"d" * 101)  # bigger than the whole cache: not kept
    assert saved.best([4]) == (-1, 0) and len(saved) == 2
