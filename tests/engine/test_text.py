"""Where reply text is cut for speech: sentence ends at once, fragments when the stream pauses."""

from __future__ import annotations

import asyncio
import time

from relay.engine.text import first_clause, join_chunk, segments, speakable, split_ready
from relay.engine.webhook import ReplyPlan, TurnRecord


def test_split_ready_releases_finished_sentences_only():
    assert split_ready("Sure. How many") == (["Sure. "], "How many")
    assert split_ready("Is it Tuesday? Yes!") == (["Is it Tuesday? ", "Yes!"], "")
    assert split_ready("It costs 3.5 dollars") == ([], "It costs 3.5 dollars")


def test_split_ready_cuts_run_on_text_near_the_limit():
    ready, rest = split_ready("word, " * 100)
    assert ready and all(len(s) <= 240 for s in ready)
    assert "".join(ready) + rest == "word, " * 100


def test_join_chunk_keeps_token_streams_and_separates_sentences():
    assert join_chunk("Hel", "lo") == "lo"
    assert join_chunk("Done.", "Next") == " Next"
    assert join_chunk("Done. ", "Next") == "Next"
    assert join_chunk("", "First") == "First"


async def _stream(parts):
    for delay, text in parts:
        await asyncio.sleep(delay)
        yield text


async def test_segments_release_a_sentence_the_moment_it_ends():
    out = []
    started = time.perf_counter()
    async for seg in segments(_stream([(0, "Sure, Tuesday works. "), (0.5, "Bye.")]), pause=2.0):
        out.append((seg, time.perf_counter() - started))
    assert [s for s, _ in out] == ["Sure, Tuesday works. ", "Bye."]
    assert out[0][1] < 0.1


async def test_segments_release_a_fragment_when_the_stream_pauses():
    out = []
    started = time.perf_counter()
    parts = [(0, "Let me"), (0.02, " check"), (0.6, " that for you.")]
    async for seg in segments(_stream(parts), pause=0.2):
        out.append((seg, time.perf_counter() - started))
    assert [s for s, _ in out] == ["Let me check", " that for you."]
    assert 0.2 <= out[0][1] < 0.4


async def test_quick_start_cuts_the_first_segment_after_its_first_clause():
    parts = [(0, "Sure, I can help with that. "), (0, "Well, it is open.")]
    out = [seg async for seg in segments(_stream(parts), pause=0.2, quick_start=True)]
    assert out == ["Sure, ", "I can help with that. ", "Well, it is open."]


def test_first_clause_leaves_short_tails_and_numbers_alone():
    assert first_clause("Yes, sir.") == ["Yes, sir."]
    assert first_clause("It costs 1,500 dollars in total.") == ["It costs 1,500 dollars in total."]
    assert first_clause("Note: we close at nine tonight.") == [
        "Note: ",
        "we close at nine tonight.",
    ]


def test_plan_interruptible_by_text_range():
    plan = ReplyPlan(turn=TurnRecord("turn_1", "speech", 0.0), default_interruptible=True)
    plan.add_text("Hello. ", None)
    plan.add_text("Legal notice. ", False)
    plan.add_text("Anything else?", None)
    assert plan.interruptible(0, 7) is True
    assert plan.interruptible(7, 21) is False
    assert plan.interruptible(0, 21) is False  # any uninterruptible text makes it so
    assert plan.interruptible(21, 35) is True


def test_speakable_needs_a_letter_or_a_digit():
    assert not any(speakable(t) for t in (".", " ... ", "?!", "", "—"))
    assert all(speakable(t) for t in ("Okay.", "42", "Ça va?"))


def test_a_clip_mark_is_a_segment_of_its_own_and_ends_the_text_before_it():
    from relay.turns import PLAY_MARK

    ready, rest = split_ready(f"Here it is{PLAY_MARK}And that was it. Then")
    assert (ready, rest) == (["Here it is", PLAY_MARK, "And that was it. "], "Then")
    ready, rest = split_ready(f"One. {PLAY_MARK}{PLAY_MARK}")
    assert (ready, rest) == (["One. ", PLAY_MARK, PLAY_MARK], "")
