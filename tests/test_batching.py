"""Continuous batching: every prompt's output is what it is alone, whatever shares its batch."""

import json
import random

import pytest
import torch
from conftest import run_on_a_terminal, save_tiny

from lmgen.engine.batching import generate, generate_many, prompt_seed
from lmgen.engine.generation import Finished, GenerationSettings, load
from lmgen.engine.sampling import SamplingSettings
from lmgen.model import kernels

PROMPTS = ["".join(random.Random(i).choice("abcdefgh ijklmnop\n") for _ in range(1 + 7 * i % 61)) for i in range(22)]


@pytest.fixture(scope="module", params=["llama", "mistral"])  # mistral: a 16-token sliding window
def lm(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    save_tiny(request.param, path)
    return load(path)


def alone(lm, settings, prompts=PROMPTS) -> dict[int, str]:
    out = {}
    for i, p in enumerate(prompts):
        s = GenerationSettings(**{**settings.__dict__, "seed": prompt_seed(settings.seed, i)})
        out[i] = "".join(e.text for e in generate(lm, p, s))
    return out


def batched(lm, settings, batch_size, prompts=PROMPTS) -> dict[int, str]:
    out: dict[int, str] = {}
    for event in generate_many(lm, prompts, settings, batch_size=batch_size):
        out[event.index] = out.get(event.index, "") + event.text
    return out


@pytest.mark.parametrize("native", [True, False])
def test_batched_greedy_equals_each_prompt_alone(lm, native, monkeypatch):
    if not native:
        monkeypatch.setattr(kernels, "library", lambda: None)
    lm.model.new_cache(1, 4)
    assert (lm.model.plan is not None) == native
    settings = GenerationSettings(max_new_tokens=20)
    expected = alone(lm, settings)
    assert len(set(map(len, PROMPTS))) > 15  # prompts of many lengths
    for batch_size in (3, 8):
        assert batched(lm, settings, batch_size) == expected


def test_seeded_sampling_does_not_depend_on_the_batch(lm):
    settings = GenerationSettings(max_new_tokens=12, seed=42,
                                  sampling=SamplingSettings(temperature=1.0, top_k=50, repetition_penalty=1.3))
    one = batched(lm, settings, 1)
    assert batched(lm, settings, 5) == one == alone(lm, settings)
    assert len(set(one.values())) > 1


def test_stop_strings_and_eos_end_each_row_on_its_own(lm):
    settings = GenerationSettings(max_new_tokens=24, stop=("a", "\n"))
    assert batched(lm, settings, 6) == alone(lm, settings)


def test_a_finished_prompt_frees_its_row_for_the_next(lm, monkeypatch):
    """Two rows; the second prompt fills the context after 2 tokens, so the third takes its row
    at once: 31 steps in all (not 31 + 31, as when a batch waits for its slowest row)."""
    steps = []
    decode_step = lm.model.decode_step
    monkeypatch.setattr(lm.model, "decode_step", lambda *a: steps.append(len(a[0])) or decode_step(*a))
    context = lm.config.max_context
    prompts = ["x" * 8, "y" * (context - 2), "z" * 8]
    events = list(generate_many(lm, prompts, GenerationSettings(max_new_tokens=32), batch_size=2))
    finished = {e.index: e for e in events if isinstance(e, Finished)}
    assert [finished[i].new_tokens for i in range(3)] == [32, 2, 32]
    assert len(steps) == 31 + 1  # the third prompt joins when the second leaves
    assert max(steps) == 2


def test_cli_prints_each_line_in_input_order_with_its_index(tiny_dir, cli):
    lines = [p.replace("\n", " ").strip() or "x" for p in PROMPTS[:10]]
    stdin = ("\n".join(lines) + "\n").encode()
    one = cli("generate", "--model", str(tiny_dir), "--each-line", "-n", "6", "--batch-size", "1", input=stdin)
    many = cli("generate", "--model", str(tiny_dir), "--each-line", "-n", "6", "--batch-size", "4", input=stdin)
    assert one.returncode == many.returncode == 0
    assert many.stdout == one.stdout and len(one.stdout.splitlines()) == 10
    result = cli("generate", "--model", str(tiny_dir), "--each-line", "-n", "6", "--jsonl", input=stdin)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in records] == list(range(10))
    assert [r["prompt"] for r in records] == lines


def test_batch_size_must_be_positive(tiny_dir, cli):
    result = cli("generate", "--model", str(tiny_dir), "--each-line", "--batch-size", "0", input=b"hi\n")
    assert result.returncode == 2 and b"batch-size" in result.stderr


def test_torch_decode_step_matches_full_passes_per_row(lm):
    """The ragged step itself: rows at different positions, logits as a full pass of each."""
    model = lm.model
    prompts = [torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 17, 30)]
    with torch.no_grad():
        cache = model.new_cache(3, 40)
        model.plan = None  # the PyTorch path (until the next cache)
        cache.k.zero_()  # as the engine's: never NaN where a row's mask hides it
        cache.v.zero_()
        for slot, ids in enumerate(prompts):
            model(ids[None, :-1], 0, cache.row(slot))
        last = torch.stack([ids[-1] for ids in prompts])
        positions = torch.tensor([len(ids) - 1 for ids in prompts])
        logits = model.decode_step(last, positions, cache)
        for i, ids in enumerate(prompts):
            assert (logits[i] - model(ids[None])[0, -1]).abs().max() < 1e-4


def test_progress_on_a_terminal_leaves_stdout_to_the_completions(lmgen_exe, tiny_dir):
    args = ["generate", "-m", str(tiny_dir), "--each-line", "-n", "4"]
    shown, out = run_on_a_terminal(lmgen_exe, args, {"TERM": "xterm-256color"}, "stderr", b"one\ntwo\nthree\n")
    assert len(out.splitlines()) == 3 and b"\x1b" not in out
    assert b"prompts done" in shown and b"3/?" in shown  # a pipe: a running count


def test_progress_bar_knows_the_lines_of_a_file(lmgen_exe, tiny_dir, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"one\n\ntwo\nthree\n")
    with open(path, "rb") as stdin:
        shown, out = run_on_a_terminal(lmgen_exe, ["generate", "-m", str(tiny_dir), "--each-line", "-n", "4"],
                                       {"TERM": "xterm-256color"}, "stderr", stdin)
    assert len(out.splitlines()) == 3
    assert b"3/3" in shown and b"prompts done" in shown


# ------------------------------------------- the KV cache holds the rows in use, not the batch size


def finished_records(events) -> list[tuple]:
    """What each sample's Finished says of its output (no timings), in prompt order."""
    done = [e for e in events if isinstance(e, Finished)]
    return sorted((e.index, e.sample, e.output, e.token_ids, e.reason, e.new_tokens) for e in done)


def caches(monkeypatch, model) -> list:
    """Every KV cache ``model`` makes from now on."""
    made = []
    new_cache = model.new_cache

    def recorded(*args, **kwargs):
        made.append(new_cache(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(model, "new_cache", recorded)
    return made


def pages_used(cache) -> int:
    """Pages of the pool ever handed out (the memory the cache has touched)."""
    return cache.pool.fresh - 1


def test_a_batch_size_far_beyond_the_prompts_sizes_the_cache_for_the_rows_used(lm, monkeypatch):
    """--batch-size 3000 with 4 prompts made a cache of 3,000 rows (35 GB for SmolLM2: exit 4):
    now pages for the positions the 4 rows hold, with the records of a batch of 4."""
    from lmgen.engine.generation import prompt_ids_for
    from lmgen.model.kv_cache import pages_for

    settings = GenerationSettings(max_new_tokens=10, seed=7, sampling=SamplingSettings(temperature=1.0))
    expected = finished_records(generate_many(lm, PROMPTS[:4], settings, batch_size=4))
    made = caches(monkeypatch, lm.model)
    assert finished_records(generate_many(lm, PROMPTS[:4], settings, batch_size=3000)) == expected
    assert len(made) == 1
    assert pages_used(made[0]) <= sum(pages_for(len(prompt_ids_for(lm, p, settings)) + 10 + 1) for p in PROMPTS[:4])


def test_rows_admitted_later_take_pages_and_keep_what_earlier_rows_hold(lm, monkeypatch):
    """A prompt joins while another is halfway through: its row takes pages from the pool, and the
    first row's keys and values stay where they are (its text is still what it is alone)."""
    from lmgen.engine.engine import Engine, Job
    from lmgen.engine.events import Failed
    from lmgen.engine.generation import prompt_ids_for
    from lmgen.model.kv_cache import pages_for

    settings = GenerationSettings(max_new_tokens=16)
    expected = alone(lm, settings, PROMPTS[:3])
    made = caches(monkeypatch, lm.model)
    engine, events = Engine(lm, 3000), []
    engine.add(Job(ids=prompt_ids_for(lm, PROMPTS[0], settings), settings=settings, index=0))
    for _ in range(6):
        events += engine.step()
    first = pages_used(made[0])
    assert first <= pages_for(len(prompt_ids_for(lm, PROMPTS[0], settings)) + 16 + 1)
    for i in (1, 2):
        engine.add(Job(ids=prompt_ids_for(lm, PROMPTS[i], settings), settings=settings, index=i))
    while engine.busy():
        events += engine.step()
    texts = {i: "".join(e.text for e in events if e.index == i and not isinstance(e, Failed)) for i in range(3)}
    assert texts == expected
    assert len(made) == 1 and pages_used(made[0]) > first
    assert pages_used(made[0]) <= sum(pages_for(len(prompt_ids_for(lm, p, settings)) + 16 + 1) for p in PROMPTS[:3])


def test_cli_batch_with_a_batch_size_far_beyond_its_prompts_runs(cli, tiny_dir, tmp_path, monkeypatch):
    """`lmgen batch --batch-size 3000` with 4 prompts: a cache of 3,000 rows (0.2 GB for the tiny
    model, 35 GB for SmolLM2) does not fit in the 64 MB this machine is made to have, 4 rows do."""
    from lmgen import resources

    monkeypatch.setattr(resources, "available_memory", lambda: 64 << 20)
    src = tmp_path / "prompts.txt"
    src.write_text("one\ntwo\nthree\nfour\n")
    result = cli("batch", str(src), "--out", str(tmp_path / "out"), "-m", str(tiny_dir), "-n", "4",
                 "--batch-size", "3000")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for part in sorted((tmp_path / "out").glob("part-*.jsonl"))
               for line in part.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [1, 2, 3, 4]
