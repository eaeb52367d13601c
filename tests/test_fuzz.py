"""A mutation fuzzer over a tiny valid checkpoint directory: every outcome is success or an LmgenError.

Each case copies the tiny Llama, breaks one thing — a config field's type or value, the
safetensors header's JSON or bytes, the shard index, tokenizer.json, the chat template, the
generation config — and runs what a user's command runs in-process: load, a few greedy tokens,
the chat template. Any exception that is not an LmgenError is a bug (it would print "internal
error" and exit 1). The seed is fixed; LMGEN_FUZZ_ITERATIONS sets the number of cases.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import traceback
from collections import Counter

import pytest

from lmgen.errors import LmgenError

ITERATIONS = int(os.environ.get("LMGEN_FUZZ_ITERATIONS", "500"))

ODD_VALUES = [None, True, False, 0, -1, 1, 2**31, 10**9, 2**64, 1e-30, -0.5, float("nan"), float("inf"), "abc", "",
              "1", [], [1, 2], {}, {"a": 1}, [[[]]]]
TEMPLATES = [
    "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    "{{ 1 / 0 }}",
    "{{ 'x' * 10**10 }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{{ messages[5]['content'] }}",
    "{{ raise_exception('no') }}",
    "{% if %}",
    "{{ messages.__class__.__mro__ }}",
    "{{ ''.__class__.__subclasses__() }}",
]


def mutate_value(rng: random.Random, value):
    """A value of another type, or this one nudged: ±1, ×2, negated, zero."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and rng.random() < 0.5:
        return rng.choice([value + 1, value - 1, value * 2, -value, 0, value * 10**6])
    return rng.choice(ODD_VALUES)


def mutate_json(rng: random.Random, data):
    """data with one field (at any depth) changed, deleted, or added; sometimes another top level."""
    if rng.random() < 0.05:
        return rng.choice([None, [], "config", 3, [data]])
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append(path + [key])
                walk(value, path + [key])
        elif isinstance(node, list) and node:
            for i in rng.sample(range(len(node)), min(3, len(node))):
                paths.append(path + [i])
                walk(node[i], path + [i])

    walk(data, [])
    if not paths:
        return rng.choice(ODD_VALUES)
    path = rng.choice(paths)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    action = rng.random()
    if action < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action < 0.2 and isinstance(parent, dict):
        parent[rng.choice(["extra", "__metadata__", "weight_map", "eos_token_id"])] = rng.choice(ODD_VALUES)
    else:
        parent[path[-1]] = mutate_value(rng, parent[path[-1]])
    return data


def flip_bytes(rng: random.Random, data: bytes, end: int | None = None) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(end or len(data))
        data[i] = rng.randrange(256)
    return bytes(data)


def split_safetensors(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def mutate_checkpoint(rng: random.Random, path) -> str:
    """Break one thing in the checkpoint directory at path; return what was done."""
    kind = rng.choice(["config", "config", "header", "header", "header-bytes", "truncate", "index", "tokenizer",
                       "tokenizer-bytes", "template", "template-config", "generation-config", "nan-weights"])
    weights = path / "model.safetensors"
    if kind == "config":
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps(mutate_json(rng, config)))
    elif kind == "header":
        header, body = split_safetensors(weights.read_bytes())
        weights.write_bytes(join_safetensors(mutate_json(rng, header), body))
    elif kind == "header-bytes":
        data = weights.read_bytes()
        weights.write_bytes(flip_bytes(rng, data, 8 + struct.unpack("<Q", data[:8])[0]))
    elif kind == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: rng.randrange(len(data))])
    elif kind == "index":
        header, _ = split_safetensors(weights.read_bytes())
        weights.rename(path / "model-00001-of-00001.safetensors")
        index = {"metadata": {}, "weight_map": {name: "model-00001-of-00001.safetensors" for name in header}}
        index = mutate_json(rng, index) if rng.random() < 0.8 else index
        if rng.random() < 0.2:
            index = {"weight_map": {"lm_head.weight": rng.choice(["../x.safetensors", "/etc/passwd", "", "."])}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    elif kind == "tokenizer":
        tokenizer = json.loads((path / "tokenizer.json").read_text())
        (path / "tokenizer.json").write_text(json.dumps(mutate_json(rng, tokenizer)))
    elif kind == "tokenizer-bytes":
        (path / "tokenizer.json").write_bytes(flip_bytes(rng, (path / "tokenizer.json").read_bytes()))
    elif kind == "template":
        (path / "chat_template.jinja").write_text(rng.choice(TEMPLATES))
    elif kind == "template-config":
        config = {"chat_template": rng.choice(TEMPLATES + ODD_VALUES), "bos_token": rng.choice(["<s>", 5, None, {}])}
        (path / "tokenizer_config.json").write_text(json.dumps(config))
    elif kind == "generation-config":
        (path / "generation_config.json").write_text(json.dumps({"eos_token_id": rng.choice(ODD_VALUES)}))
    elif kind == "nan-weights":
        header, body = split_safetensors(weights.read_bytes())
        name = rng.choice(sorted(k for k in header if k != "__metadata__"))
        start, end = header[name]["data_offsets"]
        body = bytearray(body)
        i = start + 4 * rng.randrange(max(1, (end - start) // 4))
        body[i : i + 4] = struct.pack("<f", rng.choice([float("nan"), float("inf"), -float("inf")]))
        weights.write_bytes(join_safetensors(header, bytes(body)))
    return kind


def exercise(path) -> None:
    """What `lmgen generate --chat` does with a checkpoint, in-process."""
    import lmgen
    from lmgen.text.chat import render_chat

    lm = lmgen.load(path)
    list(lmgen.generate(lm, "The cat", lmgen.GenerationSettings(max_new_tokens=2)))
    if (path / "chat_template.jinja").exists() or (path / "tokenizer_config.json").exists():
        render_chat(path, "Hello", "Be brief.")


def run_cases(tiny_dir, tmp_path, count: int, seed: int = 1234):
    rng = random.Random(seed)
    outcomes: Counter = Counter()
    bugs = []
    for case in range(count):
        path = shutil.copytree(tiny_dir, tmp_path / f"case{case}")
        kind = mutate_checkpoint(rng, path)
        try:
            exercise(path)
            outcomes["ok"] += 1
        except LmgenError as exc:
            outcomes[type(exc).__name__] += 1
        except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
            outcomes["BUG"] += 1
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            bugs.append(f"case {case} ({kind}): {type(exc).__name__}: {exc} at {frame.filename}:{frame.lineno}")
        shutil.rmtree(path, ignore_errors=True)
    return outcomes, bugs


def test_fuzzed_checkpoints_fail_cleanly(tiny_dir, tmp_path):
    outcomes, bugs = run_cases(tiny_dir, tmp_path, ITERATIONS)
    print(f"fuzz: {ITERATIONS} cases: {dict(outcomes)}")
    places = Counter(bug.rsplit(" at ", 1)[1] for bug in bugs)
    assert not bugs, f"{len(bugs)} cases raised a non-lmgen exception, at {dict(places)}:\n" + "\n".join(bugs[:8])
    assert outcomes["ok"] > 0 and sum(n for k, n in outcomes.items() if k != "ok") > 0  # both kinds happen


@pytest.mark.parametrize("value", [None, "abc", [1], {"x": 1}, float("nan"), -2])
def test_mutate_value_gives_other_values(value):
    rng = random.Random(0)
    assert any(mutate_value(rng, value) != value for _ in range(5))
