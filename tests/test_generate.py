"""The generation loop: events, finish reasons, stopping rules, the Python API."""

import pytest

import lmgen
from lmgen.errors import InputError
from lmgen.generation import Finished, GenerationSettings, Token, decode_loop
from lmgen.sampling import SamplingSettings

from conftest import save_tiny


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_tiny("llama", path)
    return lmgen.load(path)


def test_events_stream_tokens_then_one_finish(lm):
    events = list(lmgen.generate(lm, "The cat sat", lmgen.GenerationSettings(max_new_tokens=10)))
    assert all(isinstance(e, Token) for e in events[:-1])
    done = events[-1]
    assert isinstance(done, Finished)
    assert done.reason == "length" and done.new_tokens == 10 == len(events) - 1
    assert done.prompt_tokens == len("The cat sat")
    text = "".join(e.text for e in events)
    assert text == lm.tokenizer.decode([e.id for e in events[:-1]])


def test_eos_stops_with_reason_stop_and_is_not_text(lm):
    prompt = lm.tokenizer.encode("The cat sat")
    greedy = [t for t, _ in decode_loop(lm.model, prompt, GenerationSettings(max_new_tokens=5), frozenset())]
    third = greedy[2]
    steps = list(decode_loop(lm.model, prompt, GenerationSettings(max_new_tokens=5), frozenset({third})))
    stop_at = greedy.index(third)
    assert steps[-1] == (third, "stop")
    assert [t for t, _ in steps[:-1]] == greedy[:stop_at]


def test_context_window_limits_generation(lm):
    prompt = list(range(120))  # the tiny models hold 128 positions
    steps = list(decode_loop(lm.model, prompt, GenerationSettings(max_new_tokens=50), frozenset()))
    assert len(steps) == 8 and steps[-1][1] == "length"


def test_prompt_filling_the_context_is_refused(lm):
    with pytest.raises(InputError, match="context window holds 128"):
        list(decode_loop(lm.model, list(range(128)), GenerationSettings(), frozenset()))


def test_seeded_sampling_repeats_exactly(lm):
    settings = GenerationSettings(max_new_tokens=20, sampling=SamplingSettings(temperature=1.0, top_p=0.9), seed=3)

    def text():
        return "".join(e.text for e in lmgen.generate(lm, "Once", settings))

    assert text() == text()


def test_max_new_tokens_below_one_is_refused():
    with pytest.raises(InputError):
        GenerationSettings(max_new_tokens=0)


def test_empty_prompt_is_refused(lm):
    with pytest.raises(InputError):
        list(lmgen.generate(lm, ""))
