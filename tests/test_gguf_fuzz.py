"""A malformed GGUF file ends in one LmgenError: never another exception, a hang, or half a model.

A tiny valid llama GGUF is built on the fly with gguf.GGUFWriter; a seeded fuzzer then mutates its
metadata, its tensors and its raw bytes, and `inspect` and `convert` must each either succeed or
raise an LmgenError. LMGEN_FUZZ_ITERATIONS sets the number of fuzz cases (default 200).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import threading
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf.quants import quantize

from lmgen.errors import CheckpointError, EnvironmentFailure, InputError, LmgenError
from lmgen.formats.gguf.reader import convert_gguf
from lmgen.formats.inspect import report

ITERATIONS = int(os.environ.get("LMGEN_FUZZ_ITERATIONS", "200"))
SEED = 20240611
CASE_SECONDS = 20  # one case that takes longer than this has hung

D_MODEL, LAYERS, HEADS, KV_HEADS, D_MLP, CONTEXT = 64, 2, 4, 2, 128, 128
HEAD_DIM = D_MODEL // HEADS
V = GGUFValueType
MERGES = ["Ġ t", "h e", "Ġt he"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_vocab() -> tuple[list[str], list[int]]:
    """256 byte tokens, the merges' results, three control tokens, unused padding up to 300."""
    from tokenizers.pre_tokenizers import ByteLevel

    tokens = sorted(ByteLevel.alphabet()) + ["Ġt", "he", "Ġthe"] + SPECIAL
    types = [1] * (len(tokens) - len(SPECIAL)) + [3] * len(SPECIAL)
    pad = [f"[PAD{i}]" for i in range(len(tokens), 300)]
    return tokens + pad, types + [5] * len(pad)


def tiny_metadata() -> dict:
    """key → (value, type, array item type): what GGUFWriter.add_key_value takes."""
    tokens, types = tiny_vocab()
    eos = tokens.index("<|im_end|>")
    return {
        "general.architecture": ("llama", V.STRING, None),
        "general.name": ("tiny", V.STRING, None),
        "llama.block_count": (LAYERS, V.UINT32, None),
        "llama.context_length": (CONTEXT, V.UINT32, None),
        "llama.embedding_length": (D_MODEL, V.UINT32, None),
        "llama.feed_forward_length": (D_MLP, V.UINT32, None),
        "llama.attention.head_count": (HEADS, V.UINT32, None),
        "llama.attention.head_count_kv": (KV_HEADS, V.UINT32, None),
        "llama.rope.freq_base": (10000.0, V.FLOAT32, None),
        "llama.attention.layer_norm_rms_epsilon": (1e-5, V.FLOAT32, None),
        "llama.vocab_size": (len(tokens), V.UINT32, None),
        "llama.rope.dimension_count": (HEAD_DIM, V.UINT32, None),
        "tokenizer.ggml.model": ("gpt2", V.STRING, None),
        "tokenizer.ggml.pre": ("smollm", V.STRING, None),
        "tokenizer.ggml.tokens": (tokens, V.ARRAY, V.STRING),
        "tokenizer.ggml.token_type": (types, V.ARRAY, V.INT32),
        "tokenizer.ggml.merges": (MERGES, V.ARRAY, V.STRING),
        "tokenizer.ggml.bos_token_id": (tokens.index("<|im_start|>"), V.UINT32, None),
        "tokenizer.ggml.eos_token_id": (eos, V.UINT32, None),
        "tokenizer.ggml.padding_token_id": (eos, V.UINT32, None),
        "tokenizer.ggml.add_bos_token": (False, V.BOOL, None),
        "tokenizer.chat_template": ("{% for m in messages %}{{ m['content'] }}{% endfor %}", V.STRING, None),
    }


def llama_cpp_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q/K rows (the import undoes it)."""
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape
    )


def tiny_tensors(seed: int = 0) -> dict:
    """GGUF name → (array as Hugging Face lays it out, GGML type); an untied head."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    tensors = {"token_embd.weight": w(300, D_MODEL), "output_norm.weight": 1 + w(D_MODEL),
               "output.weight": w(300, D_MODEL)}
    for i in range(LAYERS):
        tensors |= {
            f"blk.{i}.attn_norm.weight": 1 + w(D_MODEL),
            f"blk.{i}.attn_q.weight": w(HEADS * HEAD_DIM, D_MODEL),
            f"blk.{i}.attn_k.weight": w(KV_HEADS * HEAD_DIM, D_MODEL),
            f"blk.{i}.attn_v.weight": w(KV_HEADS * HEAD_DIM, D_MODEL),
            f"blk.{i}.attn_output.weight": w(D_MODEL, HEADS * HEAD_DIM),
            f"blk.{i}.ffn_norm.weight": 1 + w(D_MODEL),
            f"blk.{i}.ffn_gate.weight": w(D_MLP, D_MODEL),
            f"blk.{i}.ffn_up.weight": w(D_MLP, D_MODEL),
            f"blk.{i}.ffn_down.weight": w(D_MODEL, D_MLP),
        }
    return {name: (array, GGMLQuantizationType.F32) for name, array in tensors.items()}


def write_gguf(path: Path, meta: dict, tensors: dict) -> Path:
    writer = GGUFWriter(str(path), arch="llama")
    writer.kv_data[0].clear()  # the architecture comes from meta, so a mutation can drop it
    for key, (value, vtype, sub_type) in meta.items():
        writer.add_key_value(key, value, vtype, sub_type)
    for name, (array, qtype) in tensors.items():
        if name.endswith(("attn_q.weight", "attn_k.weight")) and array.ndim == 2:
            array = llama_cpp_permute(array, HEADS if "attn_q" in name else KV_HEADS)
        if qtype == GGMLQuantizationType.F16:
            array = array.astype(np.float16)
        if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.I32):
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class Hung(BaseException):
    """Raised by ``deadline``: a BaseException, so that no ``except Exception`` can swallow it."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise Hung in the main thread if the block takes longer (it interrupts a blocking open too)."""

    def expire(*_):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_metadata(), tiny_tensors())


# ---------------------------------------------------------------------------------- the valid file


def test_tiny_gguf_converts_and_loads(tiny_gguf, tmp_path):
    import torch
    from safetensors.numpy import load_file

    from lmgen.engine.generation import load

    out = tmp_path / "model"
    cfg = convert_gguf(tiny_gguf, out)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads) == (LAYERS, D_MODEL, HEADS, KV_HEADS)
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    stored, original = load_file(str(out / "model.safetensors")), tiny_tensors()
    for gguf_name, hf_name in [("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight"),
                               ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight"),
                               ("token_embd.weight", "model.embed_tokens.weight")]:
        assert np.array_equal(stored[hf_name], original[gguf_name][0]), hf_name  # Q/K: permuted, then undone
    lm = load(out)
    assert lm.tokenizer.encode(" the") == [tiny_vocab()[0].index("Ġthe")]
    with torch.no_grad():
        logits = lm.model(torch.tensor([lm.tokenizer.encode("hello the world")]))
    assert logits.shape[-1] == 300 and torch.isfinite(logits).all()
    info = report(tiny_gguf)
    assert info["architecture"]["layers"] == LAYERS and info["lm_head"]["separate_tensor_stored"]


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.F16, GGMLQuantizationType.Q8_0])
def test_other_tensor_types_convert(tmp_path, qtype):
    tensors = {n: (a, qtype if a.ndim == 2 else t) for n, (a, t) in tiny_tensors().items()}
    convert_gguf(write_gguf(tmp_path / "q.gguf", tiny_metadata(), tensors), tmp_path / "out")
    assert (tmp_path / "out" / "config.json").is_file()


# ---------------------------------------------------------------------------------- specific refusals


def _with(key, value, vtype=V.UINT32, sub_type=None) -> dict:
    meta = tiny_metadata()
    meta[key] = (value, vtype, sub_type)
    return meta


def _without(key) -> dict:
    meta = tiny_metadata()
    del meta[key]
    return meta


REFUSED = {
    "block_count as a string": (_with("llama.block_count", "2", V.STRING), "llama.block_count"),
    "block_count of 10**9": (_with("llama.block_count", 10**9), "llama.block_count"),
    "negative head count": (_with("llama.attention.head_count", -4, V.INT32), "llama.attention.head_count"),
    "zero heads": (_with("llama.attention.head_count", 0), "llama.attention.head_count"),
    "a list for a size": (_with("llama.embedding_length", [64, 64], V.ARRAY, V.UINT32), "llama.embedding_length"),
    "a string for epsilon": (_with("llama.attention.layer_norm_rms_epsilon", "1e-5", V.STRING), "epsilon"),
    "a NaN epsilon": (_with("llama.attention.layer_norm_rms_epsilon", float("nan"), V.FLOAT32), "epsilon"),
    "a negative rope base": (_with("llama.rope.freq_base", -1.0, V.FLOAT32), "llama.rope.freq_base"),
    "ints for tokens": (_with("tokenizer.ggml.tokens", list(range(300)), V.ARRAY, V.INT32), "tokenizer.ggml.tokens"),
    "no tokens": (_without("tokenizer.ggml.tokens"), "tokenizer.ggml.tokens"),
    "eos beyond the tokens": (_with("tokenizer.ggml.eos_token_id", 300), "tokenizer.ggml.eos_token_id"),
    "bos as a bool": (_with("tokenizer.ggml.bos_token_id", True, V.BOOL), "tokenizer.ggml.bos_token_id"),
    "a merge without a space": (_with("tokenizer.ggml.merges", ["Ġt"], V.ARRAY, V.STRING), "tokenizer.ggml.merges"),
    "a merge of three": (_with("tokenizer.ggml.merges", ["a b c"], V.ARRAY, V.STRING), "tokenizer.ggml.merges"),
    "merges as ints": (_with("tokenizer.ggml.merges", [1, 2], V.ARRAY, V.INT32), "tokenizer.ggml.merges"),
    "short token_type": (_with("tokenizer.ggml.token_type", [1] * 299, V.ARRAY, V.INT32), "token_type"),
    "add_bos as an int": (_with("tokenizer.ggml.add_bos_token", 1), "tokenizer.ggml.add_bos_token"),
    "vocab_size below the tokens": (_with("llama.vocab_size", 299), "vocab_size"),
    "no architecture": (_without("general.architecture"), "general.architecture"),
    "an unknown architecture": (_with("general.architecture", "mamba", V.STRING), "mamba"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_bad_metadata_is_refused_naming_the_key(tmp_path, name):
    meta, pattern = REFUSED[name]
    path = write_gguf(tmp_path / "bad.gguf", meta, tiny_tensors())
    with pytest.raises(CheckpointError, match=pattern):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _tensors(changes: dict) -> dict:
    """tiny_tensors() with some replaced by new F32 arrays, or removed (None)."""
    tensors = tiny_tensors()
    for name, array in changes.items():
        if array is None:
            del tensors[name]
        else:
            tensors[name] = (array, GGMLQuantizationType.F32)
    return tensors


@pytest.mark.parametrize("tensors, pattern", [
    (_tensors({"blk.0.ffn_up.weight": np.zeros((D_MODEL, D_MLP), np.float32)}), "blk.0.ffn_up.weight has shape"),
    (_tensors({"token_embd.weight": np.zeros((301, D_MODEL), np.float32)}), "token_embd.weight has shape"),
    (_tensors({"blk.1.ffn_down.weight": None}), r"lacks 1 tensor.*blk\.1\.ffn_down\.weight"),
    (_tensors({"blk.2.attn_q.weight": np.zeros((D_MODEL, D_MODEL), np.float32)}), "blk.2.attn_q.weight"),
    # a q bias means attention biases (as in config.json's attention_bias): the others are missing
    (_tensors({"blk.0.attn_q.bias": np.zeros(D_MODEL, np.float32)}), r"lacks 7 tensor.*blk\.0\.attn_k\.bias"),
    (_tensors({"rope_freqs.weight": np.zeros(8, np.float32)}), "rope_freqs.weight"),
])
def test_bad_tensors_are_refused_before_dequantizing(tmp_path, monkeypatch, tensors, pattern):
    import lmgen.formats.gguf.reader as gi

    monkeypatch.setattr(gi, "gguf_tensors", lambda *a: pytest.fail("dequantized a file with bad tensors"))
    with pytest.raises(CheckpointError, match=pattern):
        convert_gguf(write_gguf(tmp_path / "bad.gguf", tiny_metadata(), tensors), tmp_path / "out")


def test_too_little_memory_is_refused_before_dequantizing(tiny_gguf, tmp_path, monkeypatch):
    import lmgen.formats.gguf.reader as gi
    import lmgen.resources

    monkeypatch.setattr(lmgen.resources, "available_memory", lambda: 1 << 20)
    monkeypatch.setattr(gi, "gguf_tensors", lambda *a: pytest.fail("dequantized without the memory"))
    with pytest.raises(EnvironmentFailure, match="GB of memory"):
        convert_gguf(tiny_gguf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _patched(data: bytes, after: bytes, skip: int, value: int) -> bytes:
    """data with the uint64 that lies ``skip`` bytes after the key ``after`` set to value."""
    at = data.index(after) + len(after) + skip
    return data[:at] + value.to_bytes(8, "little") + data[at + 8:]


@pytest.mark.parametrize("after, skip, value, padding, pattern", [
    (b"general.blob", 8, 2**60, 0, "past the end"),  # the stock reader walks 2**60 empty items: a hang
    (b"general.blob", 8, 3_000_000, 3_000_000, "more than 2097152 items"),  # fits the file, but ~3 GB parsed
    (b"tokenizer.ggml.token_type", 8, 1_000_000, 0, "past the end"),
    (b"general.name", 4, 2**62, 0, "past its end"),  # a string longer than the file
    (b"token_embd.weight", 4, 2**40, 0, r"token_embd\.weight .* beyond the end of the data section"),  # a dimension far beyond the data
])
def test_absurd_lengths_in_the_header_end_quickly(tmp_path, after, skip, value, padding, pattern):
    meta = tiny_metadata() | {"general.blob": ([1, 2, 3], V.ARRAY, V.UINT8)}  # 1-byte items: no alignment error
    path = write_gguf(tmp_path / "bad.gguf", meta, tiny_tensors())
    path.write_bytes(_patched(path.read_bytes(), after, skip, value) + bytes(padding))
    with deadline(10):
        with pytest.raises(CheckpointError, match=pattern):
            report(path)


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with deadline(10):
        with pytest.raises(CheckpointError, match="not a regular file"):
            convert_gguf(fifo, tmp_path / "out")
        with pytest.raises(CheckpointError, match="not a regular file"):
            report(fifo)
    assert not (tmp_path / "out").exists()


def test_a_device_is_refused_without_reading_it(tmp_path):
    link = tmp_path / "zero.gguf"
    link.symlink_to("/dev/zero")
    with deadline(10):
        with pytest.raises(CheckpointError, match="not a regular file"):
            convert_gguf("/dev/zero", tmp_path / "out")
        with pytest.raises(CheckpointError, match="not a regular file"):
            report(link)


# ---------------------------------------------------------------------------------- the output directory


def _listing(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_non_empty_outdir_is_refused_and_untouched(tiny_gguf, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")
    before = _listing(out)
    with pytest.raises(InputError, match="not empty"):
        convert_gguf(tiny_gguf, out)
    assert _listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_replaces_the_outdir_with_no_stale_files(tiny_gguf, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"old shard")
    convert_gguf(tiny_gguf, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_outdir_needs_no_force(tiny_gguf, tmp_path):
    (tmp_path / "out").mkdir()
    convert_gguf(tiny_gguf, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == LAYERS


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("a bug")])
@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_midway_leaves_no_outdir_and_no_temp_dirs(tiny_gguf, tmp_path, monkeypatch, error, existing):
    import lmgen.formats.gguf.reader as gi

    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("old")
    real = gi.write_json

    def write_then_fail(path, data):
        real(path, data)  # tokenizer.json and one JSON file are written by now
        raise error

    monkeypatch.setattr(gi, "write_json", write_then_fail)
    with pytest.raises(EnvironmentFailure if isinstance(error, OSError) else RuntimeError):
        convert_gguf(tiny_gguf, out, force=existing)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if existing else [])
    if existing:
        assert _listing(out) == {"old.txt": b"old"}


def test_a_failing_tokenizer_step_leaves_nothing(tiny_gguf, tmp_path, monkeypatch):
    import lmgen.formats.gguf.tokenizer

    def fail(meta):
        raise CheckpointError("no tokenizer")

    monkeypatch.setattr(lmgen.formats.gguf.tokenizer, "rebuild", fail)
    with pytest.raises(CheckpointError, match="no tokenizer"):
        convert_gguf(tiny_gguf, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("round_", range(20))  # a race: once flaky one run in twenty, so run it many times
@pytest.mark.parametrize("force", [False, True])
def test_two_concurrent_converts_leave_one_complete_model(tiny_gguf, tmp_path, force, round_):
    out, outcomes = tmp_path / "out", []

    def run():
        try:
            convert_gguf(tiny_gguf, out, force=force)
            outcomes.append("ok")
        except InputError:  # the other one finished first
            outcomes.append("refused")

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == (["ok", "ok"] if force else ["ok", "refused"])  # never two winners without --force
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["out"]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 300


# ---------------------------------------------------------------------------------- the fuzzer


_OTHER_VALUES = [
    ("x", V.STRING, None), ("", V.STRING, None), (1.5, V.FLOAT32, None), (float("inf"), V.FLOAT64, None),
    (True, V.BOOL, None), (7, V.UINT32, None), (-1, V.INT32, None), (2**63, V.UINT64, None),
    ([1, 2, 3], V.ARRAY, V.INT32), (["a", "b"], V.ARRAY, V.STRING), ([0.5], V.ARRAY, V.FLOAT32),
    ([[1], [2]], V.ARRAY, V.ARRAY),
]


def mutate_metadata(rng: random.Random, meta: dict) -> str:
    key = rng.choice(list(meta))
    value, vtype, sub = meta[key]
    ops = ["delete", "swap type"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ops += ["+1", "-1", "*2", "0", "negative", "10**9", "huge", "nan"]
    if isinstance(value, list):
        ops += ["drop one", "drop half", "duplicate one", "shuffle", "one more"]
    if isinstance(value, str):
        ops += ["garbage string"]
    op = rng.choice(ops)
    if op == "delete":
        del meta[key]
    elif op == "swap type":
        meta[key] = rng.choice(_OTHER_VALUES)
    elif op in ("+1", "-1", "*2", "0"):
        new = {"+1": value + 1, "-1": value - 1, "*2": value * 2, "0": 0 * value}[op]
        meta[key] = (new, vtype if new >= 0 else (V.INT64 if isinstance(new, int) else vtype), sub)
    elif op == "negative":
        meta[key] = (-1, V.INT32, None) if isinstance(value, int) else (-abs(value) - 1.0, vtype, None)
    elif op == "10**9":
        meta[key] = (10**9, V.UINT32, None)
    elif op == "huge":
        meta[key] = (2**62, V.UINT64, None) if isinstance(value, int) else (1e308, V.FLOAT64, None)
    elif op == "nan":
        meta[key] = (float("nan"), V.FLOAT32, None)
    elif op == "drop one" and len(value) > 1:
        meta[key] = (value[: rng.randrange(len(value))] + value[rng.randrange(len(value)) + 1:], vtype, sub)
    elif op == "drop half" and len(value) > 1:
        meta[key] = (value[: len(value) // 2], vtype, sub)
    elif op == "duplicate one":
        meta[key] = (value + [rng.choice(value)], vtype, sub)
    elif op == "shuffle":
        meta[key] = (rng.sample(value, len(value)), vtype, sub)
    elif op == "one more":
        meta[key] = (value + [value[-1]], vtype, sub)
    elif op == "garbage string":
        garbage = ["\x00", "a b c", "Ġ", "\u202e\n\x1b[31m", "gpt2 ", "x" * 1000, "qwen2", "llama"]
        meta[key] = (rng.choice(garbage), V.STRING, None)
    return f"metadata {key}: {op}"


def mutate_tensors(rng: random.Random, tensors: dict) -> str:
    name = rng.choice(list(tensors))
    array, qtype = tensors[name]
    op = rng.choice(["transpose", "one more row", "flatten", "missing", "unknown", "extra layer", "f16", "q8_0", "i32"])
    if op == "transpose":
        tensors[name] = (np.ascontiguousarray(array.T if array.ndim == 2 else array[None]), qtype)
    elif op == "one more row":
        tensors[name] = (np.concatenate([array, array[:1]]), qtype)
    elif op == "flatten":
        tensors[name] = (array.reshape(-1), qtype)
    elif op == "missing":
        del tensors[name]
    elif op == "unknown":
        tensors[rng.choice(["rope_freqs.weight", "blk.0.attn_sinks.weight", "output.bias", "blk.x.attn_q.weight"])] = (
            np.zeros(32, np.float32), GGMLQuantizationType.F32)
    elif op == "extra layer":
        tensors[name.replace("blk.0.", "blk.2.").replace("blk.1.", "blk.9.")] = (array, qtype)
    elif op == "f16":
        tensors[name] = (array, GGMLQuantizationType.F16)
    elif op == "q8_0" and array.shape[-1] % 32 == 0:
        tensors[name] = (array, GGMLQuantizationType.Q8_0)
    elif op == "i32":
        tensors[name] = (array.astype(np.int32), GGMLQuantizationType.I32)
    return f"tensor {name}: {op}"


def mutate_bytes(rng: random.Random, data: bytes, header_end: int) -> tuple[bytes, str]:
    """Flip, overwrite or cut bytes, mostly in the header (flips in the weights only change numbers)."""
    data = bytearray(data)
    op = rng.choice(["flip", "flip", "overwrite", "truncate"])
    if op == "truncate":
        at = rng.randrange(len(data)) if rng.random() < 0.3 else rng.randrange(header_end)
        return bytes(data[:at]), f"bytes: truncate at {at}"
    places = [rng.randrange(header_end if rng.random() < 0.85 else len(data)) for _ in range(rng.randint(1, 4))]
    for at in places:
        new = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        data[at] = data[at] ^ (1 << rng.randrange(8)) if op == "flip" else new
    return bytes(data), f"bytes: {op} at {places}"


def header_length(path: Path) -> int:
    from gguf import GGUFReader

    return GGUFReader(path).data_offset


def run_case(path: Path, out: Path) -> tuple[str, str | None]:
    """('ok' or the error class, a traceback summary if the error is not an LmgenError)."""
    outcomes = []
    for step in (lambda: report(path), lambda: convert_gguf(path, out)):
        try:
            with deadline(CASE_SECONDS):
                step()
            outcomes.append("ok")
        except LmgenError as exc:
            assert "\n" not in str(exc), f"a multi-line error: {exc!r}"
            outcomes.append(type(exc).__name__)
        except (Exception, Hung) as exc:  # noqa: BLE001 (what the fuzzer looks for)
            return type(exc).__name__, "".join(traceback.format_exception(exc, limit=-4))
    return "/".join(outcomes), None


def test_fuzzed_gguf_files_end_in_lmgen_errors(tiny_gguf, tmp_path):
    rng = random.Random(SEED)
    data, header_end = tiny_gguf.read_bytes(), header_length(tiny_gguf)
    counts, failures = Counter(), []
    for i in range(ITERATIONS):
        path, kind = tmp_path / f"case{i}.gguf", rng.choice(["metadata", "metadata", "tensors", "bytes", "bytes"])
        meta, tensors = tiny_metadata(), tiny_tensors()
        if kind == "metadata":
            what = mutate_metadata(rng, meta)
            if rng.random() < 0.25:
                what += "; " + mutate_metadata(rng, meta)
        elif kind == "tensors":
            what = mutate_tensors(rng, tensors)
        if kind == "bytes":
            mutated, what = mutate_bytes(rng, data, header_end)
            path.write_bytes(mutated)
        else:
            try:
                write_gguf(path, meta, tensors)
            except Exception:  # noqa: BLE001 (a value GGUFWriter cannot write, e.g. an empty array)
                counts["unwritable"] += 1
                continue
        outcome, failure = run_case(path, tmp_path / f"out{i}")
        counts[outcome] += 1
        if failure:
            failures.append(f"case {i} ({what}): {failure}")
        path.unlink()
    print(f"\n{ITERATIONS} fuzz cases (inspect/convert outcomes):", dict(counts.most_common()))
    assert not failures, f"{len(failures)} case(s) raised a non-LmgenError:\n\n" + "\n\n".join(failures[:5])


# ---------------------------------------------------------------------------------- the tensor table and values
# The gguf reader trusts a file's tensor table and never looks at the values: lmgen checks both
# (formats/gguf/validate.py). Each case below moves one tensor's offset where no valid file has
# it, or makes one value or block scale NaN or infinite; inspect and convert must both refuse it,
# naming that tensor.

BLOCK_TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]  # of the matrices (the norms stay F32)


def tensor_table(path: Path) -> dict[str, dict]:
    """name → where its offset lies in the file (``entry``), that offset, where its data starts,
    its byte count and type."""
    from gguf import GGUFReader

    table = {}
    for t in GGUFReader(path).tensors:
        entry = t.field.offset + 8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4  # name, n_dims, dims, type
        table[t.name] = {"entry": entry, "offset": int(t.field.parts[-1][0]), "start": int(t.data_offset),
                         "nbytes": int(t.n_bytes), "type": t.tensor_type}
    return table


def patched_at(data: bytes, at: int, raw: bytes) -> bytes:
    return data[:at] + raw + data[at + len(raw):]


def with_offset(data: bytes, table: dict, name: str, offset: int) -> bytes:
    """data with tensor ``name``'s offset in the table replaced (a uint64, as the format has it)."""
    return patched_at(data, table[name]["entry"], offset.to_bytes(8, "little"))


def mutate_layout(rng: random.Random, data: bytes, table: dict, data_start: int) -> tuple[bytes, str, str, str]:
    """(bytes, what was done, the tensor to be named, the error expected)."""
    name, other = rng.sample(sorted(table), 2)
    t, o, data_size = table[name], table[other], len(data) - data_start
    inside = 32 * rng.randrange(1, -(-o["nbytes"] // 32)) if o["nbytes"] > 32 else 0
    op = rng.choice(["wraps into the header", "past the end", "unaligned", "shares", "inside another"])
    offset = {"wraps into the header": 2**64 - 32 * rng.randint(1, data_start // 32),
              "past the end": -(-(data_size - t["nbytes"] + 1) // 32) * 32 + 32 * rng.randrange(4),
              "unaligned": t["offset"] + rng.randint(1, 31),
              "shares": o["offset"], "inside another": o["offset"] + inside}[op]
    expected = {"wraps into the header": "beyond the end", "past the end": "beyond the end", "unaligned": "alignment",
                "shares": "share their bytes|beyond the end",
                "inside another": "overlap|share their bytes|beyond the end"}[op]
    return with_offset(data, table, name, offset), f"{name} offset {offset} ({op} {other})", name, expected


def non_finite(rng: random.Random, field) -> tuple[int, str]:
    """Random bits that make ``field`` NaN or infinite (either sign, any NaN payload), and which."""
    width = np.dtype(field.dtype).itemsize
    mantissa = rng.choice([0, rng.randint(1, field.mantissa)])
    bits = rng.choice([0, 1 << (8 * width - 1)]) | field.exponent | mantissa
    return bits & ((1 << 8 * width) - 1), "NaN" if bits & field.mantissa else "infinity"


def mutate_values(rng: random.Random, data: bytes, table: dict) -> tuple[bytes, str, str, str]:
    from gguf import GGML_QUANT_SIZES

    from lmgen.formats.gguf.validate import FIELDS

    name = rng.choice(sorted(table))
    t = table[name]
    block_bytes = GGML_QUANT_SIZES[t["type"]][1]
    block, field = rng.randrange(t["nbytes"] // block_bytes), rng.choice(FIELDS[t["type"].name])
    bits, what = non_finite(rng, field)
    raw = bits.to_bytes(np.dtype(field.dtype).itemsize, "little")
    mutated = patched_at(data, t["start"] + block * block_bytes + field.offset, raw)
    return mutated, f"{name} {field.name} of block {block}: {what}", name, f"{what}.* {block} of"


@pytest.fixture(scope="module")
def typed_ggufs(tmp_path_factory, tiny_gguf) -> dict[str, Path]:
    """The tiny model with its matrices in each format lmgen reads as stored or as floats."""
    root, files = tmp_path_factory.mktemp("typed"), {"F32": tiny_gguf}
    for kind in BLOCK_TYPES:
        qtype = GGMLQuantizationType[kind]
        tensors = {n: (a, qtype if a.ndim == 2 else t) for n, (a, t) in tiny_tensors().items()}
        files[kind] = write_gguf(root / f"{kind}.gguf", tiny_metadata(), tensors)
    return files


def test_fuzzed_tables_and_values_are_refused_naming_the_tensor(typed_ggufs, tmp_path, monkeypatch):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    rng, failures = random.Random(SEED + 1), []
    for i in range(max(ITERATIONS // 4, 20)):
        kind = rng.choice(sorted(typed_ggufs))
        data, table = typed_ggufs[kind].read_bytes(), tensor_table(typed_ggufs[kind])
        if rng.random() < 0.5:
            mutated, what, name, expected = mutate_layout(rng, data, table, header_length(typed_ggufs[kind]))
        else:
            mutated, what, name, expected = mutate_values(rng, data, table)
        path = tmp_path / f"case{i}.gguf"  # a name of its own: lmgen's index is keyed by path
        path.write_bytes(mutated)
        for step in (lambda: report(path), lambda: convert_gguf(path, tmp_path / f"out{i}")):
            try:
                with deadline(CASE_SECONDS):
                    step()
                failures.append(f"case {i} ({kind}, {what}): accepted")
            except CheckpointError as exc:
                if name not in str(exc) or not re.search(expected, str(exc)):
                    failures.append(f"case {i} ({kind}, {what}): {exc}")
        assert not (tmp_path / f"out{i}").exists()
    assert not failures, f"{len(failures)} case(s) not refused as expected:\n" + "\n".join(failures[:10])
