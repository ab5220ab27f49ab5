"""The embedded model's prompt rendering and the streamed tool-call parser."""

from __future__ import annotations

import json

from hosted_llm.chatml import ToolCallParser, render
from hosted_llm.types import TextDelta, ToolCallDelta

TOOL = {
    "type": "function",
    "function": {"name": "lookup_order", "parameters": {"type": "object"}},
}


def test_a_conversation_with_a_tool_round_renders_as_qwen_chatml():
    messages = [
        {"role": "system", "content": "You are Ava."},
        {"role": "user", "content": "Where is A1?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"orderId": "A1"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
    ]
    prompt = render(messages, [TOOL], generation=True)
    assert prompt == (
        "<|im_start|>system\nYou are Ava.\n\n# Tools\n\nYou may call one or more functions to "
        "assist with the user query.\n\nYou are provided with function signatures within "
        "<tools></tools> XML tags:\n<tools>\n" + json.dumps(TOOL) + "\n</tools>\n\nFor each "
        "function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWhere is A1?<|im_end|>\n"
        '<|im_start|>assistant\nChecking.\n<tool_call>\n{"name": "lookup_order", '
        '"arguments": {"orderId": "A1"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"status": "shipped"}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_each_turns_prompt_extends_the_one_before():
    history = [{"role": "system", "content": "Be brief."}]
    warmed = render(history, None, generation=False)
    history += [{"role": "user", "content": "Hi"}]
    turn1 = render(history, None, generation=True)
    history += [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    turn2 = render(history, None, generation=True)
    assert turn1.startswith(warmed)
    assert turn2.startswith(turn1)  # the reply follows the generation prompt exactly


def feed_all(pieces):
    parser = ToolCallParser()
    out = []
    for piece in pieces:
        out.extend(parser.feed(piece))
    out.extend(parser.close())
    return out


def test_text_streams_through_and_a_split_tag_is_held_back():
    parser = ToolCallParser()
    assert parser.feed("Let me check <to") == [TextDelta("Let me check ")]
    assert parser.feed('ol_call>\n{"name": "lookup_order", ') == []
    calls = parser.feed('"arguments": {"orderId": "A1"}}\n</tool_call>')
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("lookup_order", {"orderId": "A1"})
    ]
    assert parser.close() == []


def test_text_that_only_looks_like_a_tag_is_spoken():
    out = feed_all(["Costs <", "5 dollars"])
    assert "".join(d.text for d in out if isinstance(d, TextDelta)) == "Costs <5 dollars"


def test_an_unclosed_call_at_the_end_is_still_parsed():
    out = feed_all(['<tool_call>\n{"name": "end_call", "arguments": {}}'])
    assert len(out) == 1 and isinstance(out[0], ToolCallDelta)
    assert out[0].name == "end_call" and out[0].arguments == "{}"


def test_a_call_that_is_not_json_has_no_name():
    out = feed_all(["<tool_call>lookup please</tool_call>"])
    assert isinstance(out[0], ToolCallDelta) and out[0].name == ""
    assert out[0].arguments == "lookup please"


def test_a_bare_json_call_without_tags_is_a_call():
    out = feed_all(['{"name": "get_weather", ', '"arguments": {"city": "Paris"}}'])
    assert len(out) == 1 and isinstance(out[0], ToolCallDelta)
    assert out[0].name == "get_weather" and json.loads(out[0].arguments) == {"city": "Paris"}


def test_a_fenced_call_is_a_call_and_other_json_is_text():
    fenced = feed_all(['```json\n{"name": "end_call", "arguments": {}}\n```'])
    assert [(c.name, c.arguments) for c in fenced] == [("end_call", "{}")]
    plain = feed_all(['{"price": 5}'])
    assert plain == [TextDelta('{"price": 5}')]
