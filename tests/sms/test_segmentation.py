"""GSM-7 and UCS-2 segments, counted and split the way carriers do."""

from __future__ import annotations

import pytest

from sms.segmentation import MAX_SEGMENTS, segment, split_messages

SMILE = "\U0001f600"  # outside the BMP: a surrogate pair in UTF-16


@pytest.mark.parametrize(
    ("text", "encoding", "units", "count"),
    [
        ("", "gsm7", 0, 1),
        ("a" * 160, "gsm7", 160, 1),
        ("a" * 161, "gsm7", 161, 2),
        ("a" * 306, "gsm7", 306, 2),
        ("a" * 307, "gsm7", 307, 3),
        ("Café £5 @ Øresund; Ñ ü à", "gsm7", 24, 1),
        ("€" * 80, "gsm7", 160, 1),
        ("€" * 81, "gsm7", 162, 2),
        ("ж" * 70, "ucs2", 70, 1),
        ("ж" * 71, "ucs2", 71, 2),
        ("ж" * 134, "ucs2", 134, 2),
        ("ж" * 135, "ucs2", 135, 3),
        (SMILE * 35, "ucs2", 70, 1),
        (SMILE * 36, "ucs2", 72, 2),
        ("a" * 159 + SMILE, "ucs2", 161, 3),
    ],
)
def test_encoding_units_and_segment_count(text, encoding, units, count):
    seg = segment(text)
    assert (seg.encoding, seg.units, seg.count) == (encoding, units, count)
    assert "".join(seg.parts) == text


def test_gsm7_parts_hold_153_septets():
    seg = segment("x" * 400)
    assert [len(p) for p in seg.parts] == [153, 153, 94]


def test_extension_characters_count_two_and_never_straddle_parts():
    text = "a" * 152 + "{" + "b" * 10
    seg = segment(text)
    assert seg.units == 164
    assert seg.parts == ("a" * 152, "{" + "b" * 10)


@pytest.mark.parametrize("char", list("^{}\\[~]|€\f"))
def test_every_extension_character_counts_two(char):
    assert segment(char * 80).units == 160
    assert segment(char * 80).count == 1
    assert segment(char * 81).count == 2


def test_ucs2_parts_hold_67_units_and_never_split_a_surrogate_pair():
    text = "ж" * 66 + SMILE + "ж" * 10
    seg = segment(text)
    assert seg.parts == ("ж" * 66, SMILE + "ж" * 10)
    for part in seg.parts:
        assert len(part.encode("utf-16-le")) // 2 <= 67


def test_one_non_gsm_character_makes_the_whole_text_ucs2():
    assert segment("Hello ’quoted’").encoding == "ucs2"
    assert segment("Hello 'quoted'").encoding == "gsm7"


def test_short_text_is_one_message():
    assert split_messages("Hello there") == ["Hello there"]


def test_long_text_splits_at_a_space_into_messages_of_at_most_ten_segments():
    words = " ".join(f"w{i:03d}" for i in range(600))  # 2,999 characters
    messages = split_messages(words)
    assert len(messages) == 2
    assert " ".join(messages) == words
    assert all(segment(m).count <= MAX_SEGMENTS for m in messages)
    assert not messages[0].endswith(" ") and messages[0].endswith(tuple("0123456789"))


def test_text_without_spaces_is_cut_hard():
    messages = split_messages("z" * 3100)
    assert [len(m) for m in messages] == [1530, 1530, 40]


def test_emoji_text_splits_on_ucs2_capacity():
    messages = split_messages(SMILE * 400)
    assert [segment(m).count for m in messages] == [10, 3]  # 33 emoji a part
    assert "".join(messages) == SMILE * 400


def test_extension_heavy_text_still_fits_ten_segments():
    messages = split_messages("a" + "€" * 900)
    assert all(segment(m).count <= MAX_SEGMENTS for m in messages)
    assert "".join(messages) == "a" + "€" * 900


def test_max_messages_stops_early():
    words = " ".join(f"w{i:03d}" for i in range(600))
    assert split_messages(words, max_messages=1) == split_messages(words)[:1]


def test_mixed_text_splits_each_message_on_its_own_encoding():
    text = "a" * 1600 + SMILE
    messages = split_messages(text)
    assert [segment(m).encoding for m in messages] == ["gsm7", "ucs2"]
    assert "".join(messages) == text
    assert all(segment(m).count <= MAX_SEGMENTS for m in messages)


def test_a_300_kb_text_splits_into_full_messages():
    words = " ".join(f"w{i:05d}" for i in range(50_000))  # 349,999 characters
    messages = split_messages(words)
    assert " ".join(messages) == words
    assert {segment(m).count for m in messages[:-1]} == {MAX_SEGMENTS}
    assert segment(messages[-1]).count <= MAX_SEGMENTS
