"""Tool calls and thinking in a reply's text (lmgen.text.tool_calls, reasoning, reply): what a
model writes in each family's syntax parses back to the same calls, and a stream cut anywhere
splits into the same parts as the whole reply."""

import json

from hypothesis import given
from hypothesis import strategies as st

from lmgen.text.reply import Reply, ReplySplitter, split_reply
from lmgen.text.tool_calls import SYNTAXES, ToolCall, call_text, parse, syntax_for

NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=20))
ARGUMENTS = st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(SCALARS, st.lists(SCALARS, max_size=3)),
                            max_size=4)
TEXT = st.text(max_size=40)  # may hold '<', '{', newlines, markers' pieces


def openai_calls(calls):
    return [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, (n, a) in enumerate(calls)]


@given(st.sampled_from(sorted(SYNTAXES)), st.lists(st.tuples(NAMES, ARGUMENTS), min_size=1, max_size=3))
def test_calls_written_in_each_syntax_parse_back_to_themselves(name, calls):
    syntax = SYNTAXES[name]
    if not syntax.open:
        calls = calls[:1]  # Llama 3's bare JSON: one call per reply
    text, parsed = parse(call_text(openai_calls(calls), syntax), syntax)
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == calls
    assert text.strip() == ""


@given(st.sampled_from(["hermes", "phi4", "fallback"]), TEXT, st.tuples(NAMES, ARGUMENTS), TEXT)
def test_text_around_marked_calls_is_kept_and_never_taken_for_a_call(name, before, call, after):
    syntax = SYNTAXES[name]
    before = before.replace(syntax.open, "")
    after = after.replace(syntax.open, "")
    text, parsed = parse(before + call_text(openai_calls([call]), syntax) + "\n" + after, syntax)
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == [call]
    assert text == before + after


@given(TEXT)
def test_text_with_no_call_is_all_content(text):
    for syntax in SYNTAXES.values():
        if syntax.open and syntax.open not in text:
            assert parse(text, syntax) == (text, [])


def pieces_in_chunks(text: str, cuts: list[int], splitter: ReplySplitter) -> Reply:
    reply, start = Reply(), 0
    for cut in sorted(set(c % (len(text) + 1) for c in cuts)) + [len(text)]:
        reply.add(splitter.feed(text[start:cut]))
        start = cut
    reply.add(splitter.finish())
    return reply


@given(TEXT, TEXT, st.tuples(NAMES, ARGUMENTS), st.booleans(), st.sampled_from(["hermes", "llama3", "fallback"]),
       st.lists(st.integers(0, 500), max_size=12))
def test_a_stream_cut_anywhere_splits_as_the_whole_reply(thought, answer, call, opened, name, cuts):
    """Reasoning, answer and calls are the same whether the reply comes whole or in pieces."""
    syntax = SYNTAXES[name]
    thought = thought.replace("</think>", "").replace("<think>", "")
    body = answer.replace("<tool_call>", "") if syntax.open else ""
    body += call_text(openai_calls([call]), syntax) + ("\n" + answer.replace("<tool_call>", "") if syntax.open else "")
    text = ("" if opened else "<think>") + thought + "</think>\n\n" + body
    whole = split_reply(text, syntax, opened)
    streamed = pieces_in_chunks(text, cuts, ReplySplitter(syntax, opened))
    assert (streamed.content, streamed.reasoning) == (whole.content, whole.reasoning)
    assert [(c.name, c.arguments) for c in streamed.calls] == [(c.name, c.arguments) for c in whole.calls]
    assert whole.reasoning == thought
    assert [(c.name, json.loads(c.arguments)) for c in whole.calls] == [call]


@given(TEXT, st.lists(st.integers(0, 100), max_size=8))
def test_without_thinking_or_tools_everything_is_content_in_any_pieces(text, cuts):
    if text.lstrip().startswith("<think>"):
        return
    assert pieces_in_chunks(text, cuts, ReplySplitter()).content == text


def test_each_family_template_picks_its_syntax():
    assert syntax_for("{% if tools %}<tool_call>{% endif %}").name == "hermes"
    assert syntax_for("<|start_header_id|>ipython{% for t in tools %}").name == "llama3"
    assert syntax_for("<|tool_call|>{{ tools }}").name == "phi4"
    assert syntax_for("[TOOL_CALLS]").name == "mistral"
    assert syntax_for("{% for m in messages %}{{ m.content }}{% endfor %}").name == "fallback"


def test_a_call_needs_a_name_and_object_arguments():
    hermes = SYNTAXES["hermes"]
    for body in ['{"arguments": {}}', '{"name": 3, "arguments": {}}', '{"name": "f", "arguments": [1]}', "{not json"]:
        text = f"<tool_call>\n{body}\n</tool_call>"
        assert parse(text, hermes) == (text, [])
    assert isinstance(parse('<tool_call>{"name": "f"}</tool_call>', hermes)[1][0], ToolCall)
