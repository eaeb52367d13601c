"""Calls that always parse (lmgen.engine.tool_grammar, chat_turn): over generated tool schemas and
every family's syntax, each call the model makes under ``required``, a named function or
``auto`` is JSON whose arguments that tool's schema accepts."""

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lmgen
from lmgen.engine.batching import generate
from lmgen.engine.chat_turn import prepare_chat
from lmgen.engine.generation import Finished, GenerationSettings
from lmgen.engine.sampling import SamplingSettings
from lmgen.engine.tool_grammar import tool_constraint
from lmgen.errors import InputError
from lmgen.text.reply import split_reply
from lmgen.text.tool_calls import SYNTAXES

PROPERTY = st.one_of(
    st.integers(1, 12).map(lambda n: {"type": "string", "maxLength": n}),
    st.just({"type": "integer", "minimum": -1000, "maximum": 1000}),
    st.just({"type": "boolean"}),
    st.lists(st.text("abcxyz", min_size=1, max_size=5), min_size=1, max_size=4, unique=True).map(lambda e: {"enum": e}),
    st.just({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3}),
    st.just({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
             "additionalProperties": False}),
)


@st.composite
def tool_schemas(draw):
    names = draw(st.lists(st.from_regex(r"[a-z][a-z_]{0,7}", fullmatch=True), min_size=1, max_size=4, unique=True))
    properties = {n: draw(PROPERTY) for n in names}
    required = draw(st.lists(st.sampled_from(names), unique=True))
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def tools_of(*schemas):
    return [{"type": "function", "function": {"name": f"tool_{i}", "parameters": s}} for i, s in enumerate(schemas)]


@pytest.fixture(scope="module")
def default_lm():
    from lmgen.formats.paths import resolve_model

    return lmgen.load(resolve_model(None))


def run(lm, tools, choice, syntax_name, seed, parallel=False):
    syntax = SYNTAXES[syntax_name]
    settings = GenerationSettings(max_new_tokens=120, seed=seed, sampling=SamplingSettings(temperature=1.0),
                                  constraint=tool_constraint(tools, choice, syntax, parallel))
    prompt = lm.chat_template.render([{"role": "user", "content": "Call a tool with some arguments."}])
    done = [e for e in generate(lm, prompt, settings) if isinstance(e, Finished)][0]
    return done, split_reply(done.output, syntax)


def assert_valid(calls, tools):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])


@settings(max_examples=15)
@given(tool_schemas(), tool_schemas(), st.sampled_from(sorted(SYNTAXES)), st.integers(0, 2**32 - 1))
def test_required_calls_always_validate_in_every_syntax(default_lm, first, second, syntax_name, seed):
    tools = tools_of(first, second)
    done, reply = run(default_lm, tools, "required", syntax_name, seed)
    if done.reason == "stop":  # (not cut off by max_new_tokens)
        assert reply.calls and not reply.content.strip() and done.complete
    assert_valid(reply.calls, tools)


@settings(max_examples=10)
@given(tool_schemas(), st.sampled_from(sorted(SYNTAXES)), st.integers(0, 2**32 - 1))
def test_a_named_function_is_the_one_called(default_lm, schema, syntax_name, seed):
    tools = tools_of({"type": "object"}, schema)
    done, reply = run(default_lm, tools, "tool_1", syntax_name, seed)
    if done.reason == "stop":
        assert [c.name for c in reply.calls] == ["tool_1"]
    assert_valid(reply.calls, tools)


@settings(max_examples=10)
@given(tool_schemas(), st.sampled_from(sorted(SYNTAXES)), st.integers(0, 2**32 - 1))
def test_auto_gives_text_or_calls_that_validate(default_lm, schema, syntax_name, seed):
    tools = tools_of(schema)
    done, reply = run(default_lm, tools, "auto", syntax_name, seed)
    assert done.complete or done.reason == "length"
    assert_valid(reply.calls, tools)


def test_parallel_calls_are_several_each_valid(default_lm):
    tools = tools_of({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    counts = []
    for seed in range(6):
        done, reply = run(default_lm, tools, "required", "hermes", seed, parallel=True)
        assert_valid(reply.calls, tools)
        counts.append(len(reply.calls))
    assert max(counts) > 1  # the grammar lets a reply hold more than one call


def test_a_tool_grammar_and_a_response_format_are_one_or_the_other(default_lm):
    from lmgen.engine.constraint import Constraint

    settings = GenerationSettings(constraint=Constraint("json_schema", "{}"))
    with pytest.raises(InputError, match="cannot be asked for together"):
        prepare_chat(default_lm, [{"role": "user", "content": "hi"}], settings, tools_of({}), "required")
    text, kept, shape = prepare_chat(default_lm, [{"role": "user", "content": "hi"}], settings, tools_of({}), "none")
    assert kept.constraint == settings.constraint and shape.syntax is None
