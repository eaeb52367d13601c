"""The commands' invariants over random inputs, on a tiny random model, in this process.

- ``generate --each-line`` (text, --json, --jsonl): one output line or record per non-empty input
  line, in input order, whatever the batch size and however soon each prompt ends.
- ``lmgen batch``: after any interruption and a rerun, every id is in the part files exactly once;
  ``_SUCCESS``'s counts equal the records there; a further rerun writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from cli_harness import assert_clean_outcome, fraction, invoke
from hypothesis import given
from hypothesis import strategies as st

line_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
                    max_size=12)
words = st.sampled_from(["a", "é", "Hi there", "x\ty", "\u2028"])
lines = st.lists(st.one_of(words, line_text, st.sampled_from(["", " ", "\t"])), max_size=12)
stops = st.lists(st.sampled_from(["a", "e", " ", "\\n"]), max_size=2)


def prompts_of(input_lines: list[str]) -> list[str]:
    return [line for line in input_lines if line.strip()]


@fraction(1.5)
@given(lines, st.sampled_from(["text", "--json", "--jsonl"]), st.integers(1, 3), st.integers(1, 3), stops,
       st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_each_line_answers_every_non_empty_line_in_order(tiny_dir, input_lines, mode, batch_size, n, stop,
                                                         newline, last_newline):
    stdin = (newline.join(input_lines) + (newline if last_newline and input_lines else "")).encode()
    args = ["generate", "-m", str(tiny_dir), "--each-line", "-n", str(n), "--batch-size", str(batch_size)]
    args += [a for s in stop for a in ("--stop", s)] + ([] if mode == "text" else [mode])
    result = invoke(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    expected = prompts_of(input_lines)
    out = result.stdout.decode()
    assert out.count("\n") == len(expected) and (out == "" or out.endswith("\n"))
    if mode == "text":
        return
    records = [json.loads(line) for line in out.split("\n")[:-1]]  # (not splitlines: U+2028 may be in a text)
    assert [r["prompt"] for r in records] == expected
    indexes = [r["index"] for r in records]
    assert indexes == sorted(set(indexes))  # in input order, each once
    for r in records:
        assert len(r["token_ids"]) == r["new_tokens"] <= n  # never more than asked for, whatever the reason
        assert not any(s in r["text"] for s in stop)  # a stop string ends the text before it, never in it
        if r["finish_reason"] == "length":  # n tokens, or the context window's end (the tiny model's 128)
            assert r["new_tokens"] == n or r["prompt_tokens"] + r["new_tokens"] == 128, r
        else:  # the end-of-sequence token (not counted) or a stop string, before n or at the n-th
            assert r["finish_reason"] == "stop", r


ids = st.one_of(st.integers(-2**53, 2**53), st.text(max_size=6))


@st.composite
def jobs(draw):
    """(the input file's text, its ids in order, the suffix)"""
    prompts = draw(st.lists(line_text.filter(str.strip), min_size=1, max_size=7))
    if draw(st.booleans()):  # a text file: ids are line numbers (blank lines in between count)
        blanks = draw(st.lists(st.booleans(), min_size=len(prompts), max_size=len(prompts)))
        rows = [row for p, blank in zip(prompts, blanks) for row in ([""] if blank else []) + [p]]
        return "\n".join(rows) + "\n", [i + 1 for i, row in enumerate(rows) if row.strip()], ".txt"
    given_ids = draw(st.lists(ids, min_size=len(prompts), max_size=len(prompts), unique_by=json.dumps))
    rows = [json.dumps({"id": i, "prompt": p}) for i, p in zip(given_ids, prompts)]
    return "\n".join(rows) + "\n", given_ids, ".jsonl"


def part_records(out: Path) -> list[dict]:
    return [json.loads(line) for part in sorted(out.glob("part-*")) for line in part.read_text().split("\n") if line]


@fraction(0.6)
@given(jobs(), st.data())
def test_batch_gives_every_id_once_after_any_interruption(tiny_dir, tmp_path_factory, job, data):
    text, expected_ids, suffix = job
    tmp = tmp_path_factory.mktemp("job")
    src, out = tmp / f"in{suffix}", tmp / "out"
    src.write_text(text, encoding="utf-8")
    args = ["batch", str(src), "--out", str(out), "-m", str(tiny_dir), "-n", str(data.draw(st.integers(1, 3))),
            "--batch-size", str(data.draw(st.integers(1, 3)))]
    stop_after = data.draw(st.integers(0, len(expected_ids)))
    cut_last = data.draw(st.booleans())  # a crash in the middle of writing a line

    from lmgen.engine import completion

    real = completion.complete

    def interrupted(*a, **k):
        for i, record in enumerate(real(*a, **k)):
            if i == stop_after:
                raise KeyboardInterrupt
            yield record

    with mock.patch.object(completion, "complete", interrupted):
        first = invoke(*args)
    if stop_after == len(expected_ids):  # not interrupted: the job is done
        assert first.returncode == 0, first.stderr
        assert sorted(json.dumps(r["id"]) for r in part_records(out)) == sorted(map(json.dumps, expected_ids))
    else:
        assert first.returncode == 130, first.stderr
        assert not (out / "_SUCCESS").exists()
        assert len(part_records(out)) == stop_after
        if cut_last and stop_after:
            part = sorted(out.glob("part-*"))[-1]
            part.write_bytes(part.read_bytes()[:-7])
    resumed = invoke(*args)
    assert resumed.returncode == 0, resumed.stderr
    records = part_records(out)
    assert sorted(map(json.dumps, (r["id"] for r in records))) == sorted(map(json.dumps, expected_ids))
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["records_total"] == len(records) == len(expected_ids)
    assert success["records_written"] + success["records_skipped"] == len(expected_ids)
    before = {p.name: p.read_bytes() for p in out.glob("part-*")}
    again = invoke(*args)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_bytes() for p in out.glob("part-*")} == before  # a rerun writes nothing
    assert json.loads((out / "_SUCCESS").read_text())["records_written"] == 0


@pytest.mark.parametrize("flag", ["--temperature", "--repetition-penalty", "--frequency-penalty",
                                  "--presence-penalty", "--top-p", "--min-p", "--typical-p", "--top-k"])
@fraction(0.25)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70)))
def test_any_sampling_value_is_used_or_refused_with_exit_2(tiny_dir, flag, value):
    result = invoke("generate", "-m", str(tiny_dir), "-n", "2", "--seed", "1", flag, repr(value), "Hello")
    assert_clean_outcome(result)
    assert result.returncode in (0, 2), result.stderr


bias_values = st.builds(lambda token, bias: f"{token}={bias!r}", st.integers(-3, 310),
                        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-200, 200)))


@fraction(0.25)
@given(st.lists(st.one_of(bias_values, st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)),
                min_size=1, max_size=4))
def test_any_logit_bias_is_used_or_refused_with_exit_2(tiny_dir, values):
    result = invoke("generate", "-m", str(tiny_dir), "-n", "2", *(a for v in values for a in ("--logit-bias", v)), "Hi")
    assert_clean_outcome(result)
    assert result.returncode in (0, 2), result.stderr
