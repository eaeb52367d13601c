"""The generation loop: events, finish reasons, stopping rules, samples, the Python API."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import save_tiny

import lmgen
from lmgen.engine.generation import Finished, GenerationSettings, Token, decode_loop
from lmgen.engine.sampling import SamplingSettings
from lmgen.errors import InputError


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return lmgen.load(tiny_dir)


def events(lm, prompt="The cat sat", **settings):
    return list(lmgen.generate(lm, prompt, lmgen.GenerationSettings(**settings)))


def greedy_ids(lm, prompt="The cat sat", n=10):
    ids = lm.tokenizer.encode(prompt)
    return [int(t) for t, _ in decode_loop(lm.model, ids, GenerationSettings(max_new_tokens=n))]


def test_events_stream_tokens_then_one_finish(lm):
    evs = events(lm, max_new_tokens=10)
    assert all(isinstance(e, Token) for e in evs[:-1])
    done = evs[-1]
    assert isinstance(done, Finished)
    assert done.reason == "length" and done.new_tokens == 10 == len(evs) - 1
    assert done.prompt_tokens == len("The cat sat")
    text = "".join(e.text for e in evs)
    assert text == lm.tokenizer.decode([e.id for e in evs[:-1]])


def test_eos_stops_with_reason_stop_and_is_not_text(lm):
    greedy = greedy_ids(lm)
    third = greedy[2]
    evs = list(lmgen.generate(dataclasses.replace(lm, eos_ids=frozenset({third})), "The cat sat"))
    stop_at = greedy.index(third)
    assert evs[-1].reason == "stop" and evs[-1].new_tokens == stop_at
    assert [e.id for e in evs[:-1]] == greedy[:stop_at]


def test_any_of_several_eos_ids_stops(lm):
    greedy = greedy_ids(lm)
    evs = list(lmgen.generate(dataclasses.replace(lm, eos_ids=frozenset({999, greedy[4]})), "The cat sat"))
    assert evs[-1].reason == "stop" and evs[-1].new_tokens == greedy.index(greedy[4])


def test_stop_string_spanning_tokens_is_never_printed(lm):
    full = "".join(e.text for e in events(lm, max_new_tokens=30))
    assert len(full) >= 12
    stop = full[5:9]  # four characters: four byte tokens with the tiny byte-level tokenizer
    evs = events(lm, max_new_tokens=30, stop=(stop,))
    text = "".join(e.text for e in evs)
    assert evs[-1].reason == "stop"
    assert text == full[: full.index(stop)]
    assert stop not in text
    assert evs[-1].stop_sequence == stop
    assert events(lm, max_new_tokens=30)[-1].stop_sequence is None


@given(st.text("abc", max_size=30), st.lists(st.text("abc", min_size=1, max_size=3), min_size=1, max_size=3),
       st.lists(st.integers(0, 30), max_size=6))
def test_the_stop_string_named_is_the_one_the_text_is_cut_at(text, stops, cuts):
    """Fed in any pieces: the text released ends where the earliest stop string begins (the
    longest of those starting there is the one named), or all of it is released and none named."""
    from lmgen.text.stops import StopStrings

    matcher, released, start, stopped = StopStrings(stops), "", 0, False
    for cut in sorted(set(c % (len(text) + 1) for c in cuts)) + [len(text)]:
        piece, stopped = matcher.push(text[start:cut])
        released, start = released + piece, cut
        if stopped:
            break
    if not stopped:
        assert released + matcher.flush() == text and matcher.matched is None
        assert not any(s in text for s in stops)
        return
    assert matcher.matched in stops and text[len(released):].startswith(matcher.matched)
    seen = released + matcher.matched  # (a stop that began earlier but was not complete yet cannot count)
    assert all(seen.find(s) in (-1, len(released)) or seen.find(s) > len(released) for s in stops)


def test_stop_strings_hold_back_only_possible_starts(lm):
    from lmgen.text.stops import StopStrings

    stops = StopStrings(["END", "xyz"])
    assert stops.push("hello E") == ("hello ", False)  # "E" could begin "END"
    assert stops.push("N") == ("", False)
    assert stops.push("x") == ("EN", False)  # "EN" can no longer be "END"; "x" may begin "xyz"
    assert stops.push("yz!") == ("", True)
    stops = StopStrings(["END"])
    assert stops.push("a EN") == ("a ", False)
    assert stops.push("D and more") == ("", True)
    stops = StopStrings(["END"])
    assert stops.push("a EN") == ("a ", False)
    assert stops.push("X") == ("ENX", False)
    assert stops.flush() == ""


def test_context_window_limits_generation(lm):
    prompt = list(range(120))  # the tiny models hold 128 positions
    steps = list(decode_loop(lm.model, prompt, GenerationSettings(max_new_tokens=50)))
    assert len(steps) == 8
    assert lmgen.generate(lm, "x" * 120, GenerationSettings(max_new_tokens=50)) is not None
    evs = events(lm, "x" * 120, max_new_tokens=50)
    assert evs[-1].reason == "length" and evs[-1].new_tokens == 8


def test_prompt_filling_the_context_is_refused(lm):
    with pytest.raises(InputError, match="context window holds 128"):
        list(decode_loop(lm.model, list(range(128)), GenerationSettings()))
    with pytest.raises(InputError, match="context window holds 128"):
        lmgen.generate(lm, "x" * 128)  # raised at the call, before any event


def test_truncate_keeps_the_end(lm):
    evs = events(lm, "x" * 200, max_new_tokens=8, truncate=True)
    assert evs[-1].prompt_tokens == 120 and evs[-1].new_tokens == 8


def test_seeded_sampling_repeats_exactly_and_differs_across_seeds(lm):
    def text(seed):
        sampling = SamplingSettings(temperature=1.0, top_p=0.9)
        return "".join(e.text for e in events(lm, "Once", max_new_tokens=20, sampling=sampling, seed=seed))

    assert text(3) == text(3)
    assert text(3) != text(4)


def test_tiny_temperature_equals_greedy(lm):
    greedy = "".join(e.text for e in events(lm, max_new_tokens=15))
    cold = "".join(e.text for e in events(lm, max_new_tokens=15, sampling=SamplingSettings(temperature=1e-6), seed=1))
    assert cold == greedy


def test_num_samples_are_independent_and_match_single_runs(lm):
    sampling = SamplingSettings(temperature=1.0)
    evs = events(lm, "Once", max_new_tokens=12, sampling=sampling, seed=5, num_samples=3)
    texts = ["".join(e.text for e in evs if e.sample == i) for i in range(3)]
    finishes = [e for e in evs if isinstance(e, Finished)]
    assert sorted(f.sample for f in finishes) == [0, 1, 2]
    assert len(set(texts)) > 1  # they are different draws
    # greedy samples are all the greedy continuation
    evs = events(lm, "Once", max_new_tokens=12, num_samples=3)
    greedy = "".join(e.text for e in events(lm, "Once", max_new_tokens=12))
    assert all("".join(e.text for e in evs if e.sample == i) == greedy for i in range(3))


def test_batched_samples_share_one_forward_per_step(lm, monkeypatch):
    calls = []
    forward, decode_step = lm.model.forward, lm.model.decode_step

    def counting_forward(tokens, *args, **kwargs):
        calls.append(("prefill", tuple(tokens.shape)))
        return forward(tokens, *args, **kwargs)

    def counting_step(tokens, *args, **kwargs):
        calls.append(("step", tuple(tokens.shape)))
        return decode_step(tokens, *args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", counting_forward)
    monkeypatch.setattr(lm.model, "decode_step", counting_step)
    events(lm, "Once", max_new_tokens=6, num_samples=4, sampling=SamplingSettings(temperature=1.0), seed=0)
    assert calls[0] == ("prefill", (1, 4))  # the prompt is prefilled once, for all four samples
    assert calls[1:] == [("step", (4,))] * 5  # then one batched step per token


def test_a_finished_sample_stops_being_decoded(lm, monkeypatch):
    rows = []
    decode_step = lm.model.decode_step
    monkeypatch.setattr(lm.model, "decode_step", lambda tokens, *a: rows.append(len(tokens)) or decode_step(tokens, *a))
    often_eos = dataclasses.replace(lm, eos_ids=frozenset(range(0, 300, 5)))  # a fifth of the tokens end a sample
    evs = events(often_eos, "Once", max_new_tokens=12, num_samples=4, seed=3, sampling=SamplingSettings(temperature=1.0))
    lengths = sorted(e.new_tokens for e in evs if isinstance(e, Finished))
    assert lengths[0] < lengths[-1]  # the samples end at different steps
    assert rows == sorted(rows, reverse=True) and rows[-1] < 4  # and the batch shrinks as they do


def test_show_probs_reports_softmax_of_the_head(lm):
    evs = events(lm, max_new_tokens=4, show_probs=3)
    ids = lm.tokenizer.encode("The cat sat")
    with torch.no_grad():
        probs = lm.model(torch.tensor([ids]))[0, -1].softmax(-1)
    first = evs[0]
    assert first.prob == pytest.approx(probs[first.id].item(), abs=1e-6)
    assert [i for i, _ in first.top] == probs.topk(3).indices.tolist()
    assert first.top[0][0] == first.id  # greedy picks the most likely
    assert all(len(e.top) == 3 for e in evs[:-1])


def test_repetition_penalty_changes_greedy_output(lm):
    plain = [e.id for e in events(lm, max_new_tokens=20)[:-1]]
    penalized = [e.id for e in events(lm, max_new_tokens=20,
                                      sampling=SamplingSettings(repetition_penalty=5.0))[:-1]]
    assert plain != penalized
    assert len(set(penalized)) >= len(set(plain))


def test_python_api_with_settings_defaults(lm):
    assert isinstance(events(lm, max_new_tokens=2)[-1], Finished)


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=0), dict(num_samples=0), dict(show_probs=-1)])
def test_invalid_generation_settings_are_refused(kwargs):
    with pytest.raises(InputError):
        GenerationSettings(**kwargs)


def test_empty_prompt_is_refused(lm):
    with pytest.raises(InputError):
        lmgen.generate(lm, "")


def test_eos_ids_from_config_and_generation_config(tmp_path):
    import json

    save_tiny("llama", tmp_path)
    assert lmgen.load(tmp_path).eos_ids == frozenset({256})
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 256]}))
    assert lmgen.load(tmp_path).eos_ids == frozenset({7, 256})


def test_finished_carries_the_whole_text_and_token_ids(tiny_dir):
    from lmgen.engine.batching import generate_many
    from lmgen.engine.generation import load

    lm = load(tiny_dir)
    for events in (list(lmgen.generate(lm, "The cat", GenerationSettings(max_new_tokens=12, stop=("e",)))),
                   list(generate_many(lm, ["The cat", "A dog"], GenerationSettings(max_new_tokens=12), batch_size=2))):
        for done in [e for e in events if isinstance(e, Finished)]:
            mine = [e for e in events if e.index == done.index]
            assert done.output == "".join(e.text for e in mine)
            assert list(done.token_ids) == [e.id for e in mine if isinstance(e, Token)]


def test_records_are_built_without_the_cli_libraries():
    import subprocess
    import sys

    code = "import sys, lmgen.engine.records; print(any(m in sys.modules for m in ('typer', 'rich')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=100, max_size=700))
@settings(max_examples=40, deadline=None)
def test_a_prompt_refused_by_its_size_could_never_have_fit(lm, text):
    """refuse_what_cannot_fit is sound: what it refuses untokenized has at least the context's
    tokens, and what it lets through is tokenized as before."""
    from lmgen.engine.generation import PromptTooLong, refuse_what_cannot_fit

    try:
        refuse_what_cannot_fit(lm, text)
    except PromptTooLong:
        assert len(lm.encode_prompt(text)) >= lm.config.max_context


def test_a_huge_prompt_is_refused_before_it_is_tokenized(lm, monkeypatch):
    from lmgen.engine.generation import PromptTooLong, prompt_ids_for

    monkeypatch.setattr(type(lm), "encode_prompt", lambda *a: pytest.fail("tokenized"))
    with pytest.raises(PromptTooLong, match="bytes, more than the context window"):
        prompt_ids_for(lm, "word " * 200_000, GenerationSettings())


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4).flatmap(lambda rows: st.integers(1, 6).flatmap(lambda vocab: st.lists(
    st.lists(st.one_of(st.floats(-2e4, 2e4, width=32), st.sampled_from([0.0, 1.0, float("nan"), float("inf"),
                                                                          -float("inf"), 1e4, -1e4, 10001.0])),
             min_size=vocab, max_size=vocab), min_size=rows, max_size=rows))))
def test_logits_are_refused_exactly_when_degenerate(rows):
    """Invariant: require_sound passes a row set iff every logit is finite and within ±1e4 and
    no row (of more than one token) holds one value throughout; what it refuses is a CheckpointError."""
    from lmgen.engine.generation import LOGIT_LIMIT, require_sound
    from lmgen.errors import CheckpointError

    logits = torch.tensor(rows, dtype=torch.float32)
    sound = bool(torch.isfinite(logits).all()) and bool((logits.abs() <= LOGIT_LIMIT).all()) \
        and (logits.shape[1] == 1 or all(len(set(row)) > 1 for row in logits.tolist()))
    for shaped in (logits, logits[:, None, :]):  # [rows, vocab] as decoded, [rows, positions, vocab] as scored
        if sound:
            require_sound(shaped)
        else:
            with pytest.raises(CheckpointError):
                require_sound(shaped)
