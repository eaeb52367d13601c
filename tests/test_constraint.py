"""Structured output (lmgen.engine.constraint): every output a JSON schema, regex or Lark grammar accepts."""

import json
import os
import re
import subprocess

import jsonschema
import pytest
from conftest import assert_one_line_error

import lmgen
from lmgen.engine.batching import generate, generate_many
from lmgen.engine.constraint import Constraint
from lmgen.engine.generation import Finished, GenerationSettings
from lmgen.engine.sampling import SamplingSettings
from lmgen.errors import InputError
from lmgen.text.chat import render_chat

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "role": {"enum": ["admin", "user", "guest"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "score", "tags", "address"],
    "additionalProperties": False,
}
SUBJECTS = ["a baker", "a pilot", "a chess player", "a nurse", "a farmer", "a poet", "a teacher", "a diver",
            "a judge", "a chef", "a miner", "a painter", "a sailor", "a banker", "a dancer", "a doctor",
            "a plumber", "a singer", "a monk", "a tailor", "a librarian", "a hunter", "a clerk", "a mayor",
            "a drummer", "a gardener", "a coach", "a knight", "a spy", "a wizard"]


def outputs(lm, prompts, settings, chat=True):
    texts = [render_chat(lm.path, p, None) if chat else p for p in prompts]
    done = [e for e in generate_many(lm, texts, settings, batch_size=8) if isinstance(e, Finished)]
    return [e for e in sorted(done, key=lambda e: (e.index, e.sample))]


@pytest.fixture(scope="module")
def default_lm():
    from lmgen.formats.paths import resolve_model

    return lmgen.load(resolve_model(None))


def test_thirty_prompts_give_json_the_schema_accepts(default_lm):
    constraint = Constraint("json_schema", json.dumps(SCHEMA))
    prompts = [f"Describe {who} as a JSON record." for who in SUBJECTS]
    done = outputs(default_lm, prompts, GenerationSettings(max_new_tokens=200, constraint=constraint))
    assert len(done) == 30
    for event in done:
        jsonschema.validate(json.loads(event.output), SCHEMA)
        assert event.reason == "stop" and event.complete
    assert len({e.output for e in done}) > 10  # the prompts still matter


def test_regex_outputs_match_in_full(default_lm):
    pattern = r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    prompts = [f"When was {who} born? Give a date." for who in SUBJECTS[:8]]
    for event in outputs(default_lm, prompts, GenerationSettings(max_new_tokens=20, constraint=Constraint("regex", pattern))):
        assert re.fullmatch(pattern, event.output), event.output
        assert event.reason == "stop" and event.complete  # nothing can follow a full date


def test_a_lark_grammar_is_followed(default_lm):
    grammar = 'start: item ("," item)*\nitem: NUMBER | WORD\nNUMBER: /[0-9]{1,4}/\nWORD: /[a-z]{1,10}/\n'
    prompts = [f"List a few things {who} owns, separated by commas." for who in SUBJECTS[:6]]
    for event in outputs(default_lm, prompts, GenerationSettings(max_new_tokens=24, constraint=Constraint("grammar", grammar))):
        assert re.fullmatch(r"([0-9]{1,4}|[a-z]{1,10})(,([0-9]{1,4}|[a-z]{1,10}))*", event.output), event.output


def test_a_constraint_that_allows_everything_changes_nothing(default_lm):
    prompt = "The history of the city of Paris begins"
    free = GenerationSettings(max_new_tokens=40)
    anything = GenerationSettings(max_new_tokens=40, constraint=Constraint("regex", r"[\s\S]*"))
    plain = next(e for e in generate(default_lm, prompt, free) if isinstance(e, Finished))
    constrained = next(e for e in generate(default_lm, prompt, anything) if isinstance(e, Finished))
    assert constrained.token_ids == plain.token_ids and len(plain.token_ids) == 40


def test_sampling_with_a_constraint_is_seeded_and_every_sample_is_valid(default_lm):
    sampling = SamplingSettings(temperature=1.0, top_p=0.95)
    settings = GenerationSettings(max_new_tokens=200, sampling=sampling, seed=7, num_samples=3,
                                  constraint=Constraint("json_schema", json.dumps(SCHEMA)))
    prompt = render_chat(default_lm.path, "Describe a sailor as a JSON record.", None)

    def run():
        return [e.output for e in generate(default_lm, prompt, settings) if isinstance(e, Finished)]

    first = run()
    assert first == run()
    assert len(set(first)) > 1
    for text in first:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_running_out_of_tokens_is_length_and_incomplete(default_lm):
    settings = GenerationSettings(max_new_tokens=5, constraint=Constraint("json_schema", json.dumps(SCHEMA)))
    done = next(e for e in generate(default_lm, "A record:", settings) if isinstance(e, Finished))
    assert done.reason == "length" and done.complete is False


def test_cli_json_schema_into_a_json_parser(cli, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    result = cli("generate", "--chat", "-n", "200", "--json-schema", str(schema), "Describe a baker as JSON.")
    assert result.returncode == 0, result.stderr
    jsonschema.validate(json.loads(result.stdout), SCHEMA)
    lines = cli("generate", "--each-line", "--jsonl", "--chat", "-n", "200", "--json-schema", json.dumps(SCHEMA),
                "--stats", input=b"Describe a nurse.\nDescribe a pilot.\n")
    assert lines.returncode == 0, lines.stderr
    records = [json.loads(line) for line in lines.stdout.decode().splitlines()]
    assert len(records) == 2 and all(r["complete"] and r["constraint_s"] > 0 for r in records)
    for record in records:
        jsonschema.validate(json.loads(record["text"]), SCHEMA)
    assert lines.stderr.decode().count("constraint masks") == 2


def test_cli_warns_when_the_output_is_incomplete(cli):
    result = cli("generate", "-n", "3", "--json-schema", json.dumps(SCHEMA), "Data:")
    assert result.returncode == 0
    assert "lmgen: warning: the output is incomplete" in result.stderr.decode()


@pytest.mark.parametrize("args, pattern", [
    (["--regex", "[a-"], r"--regex: invalid regex .*unclosed character class"),
    (["--regex", "(a"], r"--regex: invalid regex .*unclosed group"),
    (["--json-schema", '{"type": "nonsense"}'], r"--json-schema: .*nonsense"),
    (["--json-schema", '{"type": '], r"--json-schema is not valid JSON"),
    (["--json-schema", "[1, 2]"], r"--json-schema must be a JSON object"),
    (["--json-schema", "no/such/file.json"], r"does not exist"),
    (["--json-schema", "x" * 5000], r"--json-schema"),
    (["--grammar", "no/such/file.lark"], r"does not exist"),
    (["--regex", "a", "--json-schema", "{}"], r"choose one of --json-schema, --regex"),
    (["--json-schema", "false"], r"--json-schema false accepts no output at all"),
])
def test_bad_constraints_are_one_line_and_exit_2(cli, args, pattern):
    assert_one_line_error(cli("generate", *args, "hi"), 2, pattern)


def test_a_bad_grammar_file_names_the_line(cli, tmp_path):
    grammar = tmp_path / "g.lark"
    grammar.write_text('start: "a" b\n')
    assert_one_line_error(cli("generate", "--grammar", str(grammar), "hi"), 2, r"line 1, column \d+: unknown name")


def test_without_llguidance_the_error_names_the_extra(lmgen_exe, tmp_path):
    """llguidance is an optional extra: without it, one line says how to install it (exit 4)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['llguidance'] = None\n")
    env = {**os.environ, "PYTHONPATH": str(hide)}
    result = subprocess.run([lmgen_exe, "generate", "--regex", "a+", "hi"], capture_output=True, env=env, timeout=120)
    assert_one_line_error(result, 4, r'pip install "lmgen\[structured\]"')


def test_constraint_options_are_checked_before_any_model_loads():
    with pytest.raises(InputError, match="choose one of"):
        Constraint.from_options(json_schema="{}", regex="a")
    assert Constraint.from_options() is None
    assert Constraint.from_options(regex="a+") == Constraint("regex", "a+")


def test_json_schema_true_accepts_any_json(cli, tiny_dir):
    result = cli("generate", "-m", str(tiny_dir), "-n", "4", "--json-schema", "true", "--json", "hi")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("option, text", [("--regex", r"[^\s\S]"), ("--grammar", "start: /[^\\s\\S]/\n")])
def test_a_constraint_no_text_satisfies_is_one_line(cli, tiny_dir, tmp_path, option, text):
    """Valid on its own, it allows no first token: once a multi-line matcher dump, exit 1."""
    if option == "--grammar":
        (tmp_path / "g.lark").write_text(text)
        text = str(tmp_path / "g.lark")
    result = cli("generate", "-m", str(tiny_dir), "-n", "4", option, text, "hi")
    assert_one_line_error(result, 2, f"{option} accepts no text that this model's tokens can make")
