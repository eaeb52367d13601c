"""lmgen quantize: checkpoints and GGUF files written as GGUF files llama.cpp runs.

Each file is read back with the gguf library's own reader (names from its own Hugging Face → GGUF
map, every block byte for byte what ``gguf.quants.quantize`` makes of the source after llama's
Q/K permutation) and run by lmgen (logits as close to the fp32 model as the format's step
allows, and equal to the dequantized weights' within the activations' rounding). The default
model quantized to Q4_1 is compared with the Q4_1 file llama.cpp's own tools made of it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, save_tiny
from gguf import MODEL_ARCH, GGMLQuantizationType, GGUFReader, get_tensor_name_map
from gguf.quants import quantize as gguf_quantize
from safetensors.numpy import load_file, save_file
from test_families import save_family
from test_gguf_arch import llama_cpp_permute
from test_gguf_fuzz import tiny_gguf, typed_ggufs  # noqa: F401 (fixtures)

import lmgen
from lmgen.formats.gguf import arch as gguf_arch
from lmgen.formats.gguf import writer
from lmgen.formats.gguf.reader import convert_gguf

TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
BITS = {"q8_0": 8, "q5_0": 5, "q5_1": 5, "q4_0": 4, "q4_1": 4}
LLAMA_CPP_KEYS = ["general.architecture", "llama.context_length", "llama.embedding_length", "llama.block_count",
                  "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                  "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model",
                  "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                  "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "general.file_type",
                  "general.quantization_version"]
TOKENS = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(4))


def quantized(cli, src, out, qtype: str, *extra: str):
    result = cli("quantize", str(src), str(out), "--type", qtype, *extra)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert len(result.stderr.decode().strip().splitlines()) == 1  # the summary line
    return result.stderr.decode()


def fields(path) -> dict:
    return {key: field.contents() for key, field in GGUFReader(path).fields.items()}


def logits(model, tokens=TOKENS):
    with torch.inference_mode():
        return model(tokens)


def fp32_fields(cfg) -> dict:
    """A config's fields as a GGUF file holds them (numbers in fp32), but the end ids (the tokenizer's)."""
    return {k: float(np.float32(v)) if isinstance(v, float) else v for k, v in cfg.to_dict().items()
            if k != "eos_token_ids"}


def no_leftovers(directory) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("qtype", TYPES)
def test_every_block_is_the_gguf_librarys_bytes_of_the_permuted_source(tiny_dir, cli, tmp_path, qtype):
    out = tmp_path / "tiny.gguf"
    line = quantized(cli, tiny_dir, out, qtype)
    assert line.startswith(f"wrote {out} ({qtype}): 21 tensors (") and "bits per weight" in line
    source = load_file(str(tiny_dir / "model.safetensors"))
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, 2)  # the gguf library's own names, not lmgen's
    expected = {names.get_name(name.rsplit(".", 1)[0]) + "." + name.rsplit(".", 1)[1]: array
                for name, array in source.items()}
    stored = {t.name: t for t in GGUFReader(out).tensors}
    assert stored.keys() == expected.keys()
    for name, array in expected.items():
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            array = llama_cpp_permute(array, 4 if "attn_q" in name else 2)
        want = (GGMLQuantizationType.F32 if array.ndim == 1 else GGMLQuantizationType.Q8_0 if name == "output.weight"
                else GGMLQuantizationType[qtype.upper()])
        assert stored[name].tensor_type == want, name
        assert tuple(reversed(stored[name].shape.tolist())) == array.shape
        assert np.array_equal(np.asarray(stored[name].data).reshape(-1).view(np.uint8),
                              gguf_quantize(array, want).reshape(-1).view(np.uint8)), name


def test_bf16_and_f16_sources_are_widened_bit_for_bit(tiny_dir, cli, tmp_path):
    import safetensors.torch

    for dtype in (torch.bfloat16, torch.float16):
        src = tmp_path / str(dtype)
        shutil.copytree(tiny_dir, src)
        narrow = {k: v.to(dtype) for k, v in safetensors.torch.load_file(str(src / "model.safetensors")).items()}
        safetensors.torch.save_file(narrow, str(src / "model.safetensors"), metadata={"format": "pt"})
        quantized(cli, src, tmp_path / "out.gguf", "q4_1", "--force")
        stored = {t.name: np.asarray(t.data) for t in GGUFReader(tmp_path / "out.gguf").tensors}
        down = narrow["model.layers.0.mlp.down_proj.weight"].float().numpy()
        assert np.array_equal(stored["blk.0.ffn_down.weight"], gguf_quantize(down, GGMLQuantizationType.Q4_1))


@pytest.mark.parametrize("qtype", TYPES)
def test_lmgen_runs_it_as_close_to_fp32_as_the_format_allows(tiny_dir, cli, tmp_path, monkeypatch, qtype):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    out = tmp_path / "tiny.gguf"
    quantized(cli, tiny_dir, out, qtype)
    convert_gguf(out, tmp_path / "expanded")  # the file's weights dequantized by the gguf library
    fp32, expanded = logits(lmgen.load(tiny_dir).model), logits(lmgen.load(tmp_path / "expanded").model)
    lm = lmgen.load(out)
    got, scale = logits(lm.model), fp32.abs().max().item()
    # the file's own weights: only the activations' rounding (or a note's re-quantization) differs
    assert (got - expanded).abs().max().item() < (0.05 if lm.notes else 2e-3) * scale
    # the format's rounding of the weights: a step of 2^-(bits-1) of each block's largest weight
    assert (expanded - fp32).abs().max().item() < 6 * 2.0 ** (1 - BITS[qtype]) * scale
    result = cli("generate", "-m", str(out), "-n", "4", "--json", "hello")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["finish_reason"] in ("length", "eos", "stop")


def test_the_metadata_a_llama_cpp_loader_needs(tiny_chat_dir, cli, tmp_path):
    out = tmp_path / "chat.gguf"
    quantized(cli, tiny_chat_dir, out, "q8_0")
    meta = fields(out)
    assert [key for key in LLAMA_CPP_KEYS if key not in meta] == []
    config = json.loads((tiny_chat_dir / "config.json").read_text())
    assert (meta["llama.context_length"], meta["llama.embedding_length"], meta["llama.block_count"],
            meta["llama.feed_forward_length"], meta["llama.attention.head_count"],
            meta["llama.attention.head_count_kv"], meta["llama.vocab_size"], meta["llama.rope.dimension_count"]) == \
        (128, 64, 2, 128, 4, 2, 300, 16)
    assert meta["llama.rope.freq_base"] == config.get("rope_theta", 10000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    assert (meta["general.file_type"], meta["general.quantization_version"]) == (7, 2)  # MOSTLY_Q8_0
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert meta["tokenizer.ggml.tokens"][256] == "<|endoftext|>" and meta["tokenizer.ggml.token_type"][256] == 3
    assert meta["tokenizer.ggml.tokens"][299] == "[PAD299]" and meta["tokenizer.ggml.token_type"][299] == 5
    assert meta["tokenizer.ggml.merges"] == []  # a byte vocabulary: no merges, but the key llama.cpp requires
    assert meta["tokenizer.ggml.eos_token_id"] == 256
    assert meta["tokenizer.chat_template"] == (tiny_chat_dir / "chat_template.jinja").read_text()
    result = cli("chat", "-m", str(out), "-n", "3", input=b"hi\n")
    assert result.returncode == 0, result.stderr


def test_the_default_model_as_llama_cpp_quantized_it(smollm2_dir, cli, tmp_path):
    """The installed Q4_1 file was made by llama.cpp (converter and llama-quantize) from the
    original checkpoint; the same weights quantized here give every tensor byte for byte
    (their fp32 expansion re-quantized in the same blocks is the same blocks), with the same
    types (the tied embedding at Q8_0), names and Q/K permutation, and the same metadata."""
    from lmgen.formats.paths import bundled_gguf

    out = tmp_path / "smollm2.gguf"
    quantized(cli, smollm2_dir, out, "q4_1")
    ours, theirs = GGUFReader(out), GGUFReader(bundled_gguf())
    assert {t.name: t.tensor_type for t in ours.tensors} == {t.name: t.tensor_type for t in theirs.tensors}
    data = {t.name: np.asarray(t.data) for t in ours.tensors}
    assert all(np.array_equal(data[t.name], np.asarray(t.data)) for t in theirs.tensors)
    mine, llama_cpp = fields(out), fields(bundled_gguf())
    model_card = {"general.name", "general.basename", "general.finetune", "general.languages", "general.license",
                  "general.organization", "general.size_label", "GGUF.kv_count"}
    # key_length/value_length: today's converter writes them from config.json's head_dim; add_space_prefix
    # comes from a tokenizer_config.json key the imported directory does not keep
    assert mine.keys() - llama_cpp.keys() - model_card == {"llama.attention.key_length", "llama.attention.value_length"}
    assert llama_cpp.keys() - mine.keys() - model_card == {"tokenizer.ggml.add_space_prefix"}
    assert {k: v for k, v in mine.items() if k in llama_cpp and k not in model_card} == \
        {k: v for k, v in llama_cpp.items() if k in mine and k not in model_card}


def test_a_gguf_file_requantized_to_q8_0_runs_as_its_source(smollm2_dir, cli, tmp_path, monkeypatch):
    """The default model's Q4_1 file to Q8_0: its metadata carried over but for the file type, and
    its blocks those lmgen's own --dtype q8 makes of the same weights (the same logits)."""
    from lmgen.formats.paths import bundled_gguf

    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    out = tmp_path / "q8.gguf"
    assert "(211 q8_0, 61 f32)" in quantized(cli, bundled_gguf(), out, "q8_0")
    mine, source = fields(out), fields(bundled_gguf())
    assert mine.pop("general.file_type") == 7 and source.pop("general.file_type") == 3
    assert mine == source  # tokenizer, chat template, model card: all carried over
    lm = lmgen.load(out)
    ids = torch.tensor([lm.encode("The capital of France is Paris, and the capital of Italy is Rome.")])
    assert torch.equal(logits(lm.model, ids), logits(lmgen.load(smollm2_dir, dtype="q8").model, ids))
    original = torch.log_softmax(logits(lmgen.load(bundled_gguf()).model, ids), -1)
    assert (torch.log_softmax(logits(lm.model, ids), -1) - original)[0, :-1].gather(-1, ids[0, 1:, None]).abs() \
        .mean().item() < 0.3  # Q4_1's weights rounded again, to 8 bits (0.13 measured)
    result = cli("generate", "-m", str(out), "-n", "8", "The capital of France is")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


FAMILIES = {
    "qwen2-biases": ("qwen2", {}),
    "qwen3-head-dim": ("qwen3", dict(head_dim=32)),
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),
    "llama-llama3": ("llama", dict(rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                                        low_freq_factor=1.0, high_freq_factor=4.0,
                                                        original_max_position_embeddings=8192))),
    "llama-linear": ("llama", dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0))),
    "llama-yarn": ("llama", dict(rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                                      original_max_position_embeddings=32))),
}


@pytest.mark.parametrize("case", sorted(FAMILIES))
def test_each_writable_family_reads_back_as_the_same_model(case, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    model_type, overrides = FAMILIES[case]
    save_family(model_type, overrides, tmp_path / "hf")
    out = tmp_path / "model.gguf"
    quantized(cli, tmp_path / "hf", out, "q8_0")
    source, lm = lmgen.load(tmp_path / "hf"), lmgen.load(out)
    assert fp32_fields(lm.config) == fp32_fields(source.config)
    fp32 = logits(source.model)
    assert (logits(lm.model) - fp32).abs().max().item() < 6 * 2.0 ** -7 * fp32.abs().max().item()
    types = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    assert ("output.weight" in types) == (case != "llama-tied")
    assert types["token_embd.weight"] == "Q8_0" and ("rope_freqs.weight" in types) == (case == "llama-llama3")


def test_rows_that_are_no_whole_blocks_fall_back_to_f16(cli, tmp_path, monkeypatch):
    """llama-quantize stops at such a row ("no tensor type fallback is defined" for 32-blocks);
    F16 is its own last resort, and what lmgen writes."""
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    save_tiny("llama", tmp_path / "hf", hidden_size=48, intermediate_size=96)
    out = tmp_path / "model.gguf"
    quantized(cli, tmp_path / "hf", out, "q4_0")
    types = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    assert types["blk.0.ffn_down.weight"] == "Q4_0"  # rows of 96
    assert {types[n] for n in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight", "token_embd.weight")} == {"F16"}
    assert cli("generate", "-m", str(out), "-n", "3", "hi").returncode == 0


@pytest.mark.parametrize("heads", [1, 2, 3, 9])
def test_the_permutation_is_the_inverse_of_the_imports(heads):
    weight = np.random.default_rng(heads).standard_normal((heads * 8, 5)).astype(np.float32)
    llama = gguf_arch.ARCHS["llama"]
    permuted = writer.prepare(llama, "blk.0.attn_q.weight", weight, heads, 1)
    assert np.array_equal(permuted, llama_cpp_permute(weight, heads))
    assert np.array_equal(gguf_arch.restore(llama, "blk.0.attn_q.weight", permuted, heads, 1), weight)


# --------------------------------------------------------------------------- what is refused


def test_bad_options_and_sources_are_one_line(tiny_dir, cli, tmp_path):
    out = tmp_path / "out.gguf"
    assert_one_line_error(cli("quantize", str(tiny_dir), str(out), "--type", "q3_k"), 2, r"unknown --type 'q3_k'")
    assert_one_line_error(cli("quantize", str(tmp_path / "nothing"), str(out), "--type", "q8_0"), 3, "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("quantize", str(tmp_path / "empty"), str(out), "--type", "q8_0"), 3, "no config")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 20)
    assert_one_line_error(cli("quantize", str(truncated), str(out), "--type", "q8_0"), 3, "GGUF")
    assert_one_line_error(cli("quantize", str(tiny_dir), str(tmp_path), "--type", "q8_0"), 2, "is a directory")
    out.write_bytes(b"keep me")
    assert_one_line_error(cli("quantize", str(tiny_dir), str(out), "--type", "q8_0"), 2, "exists; pass --force")
    assert out.read_bytes() == b"keep me"
    assert "wrote" in quantized(cli, tiny_dir, out, "q8_0", "--force")
    no_leftovers(tmp_path)


def test_families_and_tokenizers_it_cannot_write_are_refused(cli, tmp_path):
    save_tiny("gpt2", tmp_path / "gpt2")
    assert_one_line_error(cli("quantize", str(tmp_path / "gpt2"), str(tmp_path / "a.gguf"), "--type", "q8_0"), 2,
                          "writes the llama, qwen2, qwen3 families; this model is gpt2")
    save_tiny("qwen2", tmp_path / "window", use_sliding_window=True, sliding_window=16, max_window_layers=0)
    assert_one_line_error(cli("quantize", str(tmp_path / "window"), str(tmp_path / "b.gguf"), "--type", "q8_0"), 2,
                          "cannot express this model's sliding_window")
    save_family("llama", dict(rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)),
                tmp_path / "dynamic")
    assert_one_line_error(cli("quantize", str(tmp_path / "dynamic"), str(tmp_path / "e.gguf"), "--type", "q8_0"), 2,
                          "rotary scaling 'dynamic' has no GGUF form")
    save_tiny("llama", tmp_path / "spm")
    spec = json.loads((tmp_path / "spm" / "tokenizer.json").read_text())
    spec["model"]["byte_fallback"] = True
    (tmp_path / "spm" / "tokenizer.json").write_text(json.dumps(spec))
    assert_one_line_error(cli("quantize", str(tmp_path / "spm"), str(tmp_path / "c.gguf"), "--type", "q8_0"), 2,
                          "byte-level BPE tokenizers .* only")
    spec["model"]["byte_fallback"] = False
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "spm" / "tokenizer.json").write_text(json.dumps(spec))
    assert_one_line_error(cli("quantize", str(tmp_path / "spm"), str(tmp_path / "d.gguf"), "--type", "q8_0"), 2,
                          "pre-tokenizer is not one")
    assert not list(tmp_path.glob("*.gguf"))
    no_leftovers(tmp_path)


def test_weights_that_are_not_finite_are_never_written(tiny_dir, cli, tmp_path):
    src = tmp_path / "nan"
    shutil.copytree(tiny_dir, src)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"][3, 7] = np.nan
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    assert_one_line_error(cli("quantize", str(src), str(tmp_path / "out.gguf"), "--type", "q4_0"), 3,
                          r"blk\.1\.ffn_down\.weight holds NaN or infinite values")
    assert not (tmp_path / "out.gguf").exists()
    no_leftovers(tmp_path)


@pytest.mark.parametrize("failure, code", [(OSError(errno.ENOSPC, "No space left on device"), 4),
                                           (KeyboardInterrupt(), 130)])
def test_a_write_that_fails_halfway_leaves_no_file(tiny_dir, cli, tmp_path, monkeypatch, failure, code):
    from gguf import GGUFWriter

    written = []
    original = GGUFWriter.write_tensor_data

    def write_some(self, tensor, *args):
        if len(written) == 5:
            raise failure
        written.append(tensor.nbytes)
        return original(self, tensor, *args)

    monkeypatch.setattr(GGUFWriter, "write_tensor_data", write_some)
    result = cli("quantize", str(tiny_dir), str(tmp_path / "out.gguf"), "--type", "q5_1")
    assert result.returncode == code, result.stderr
    if code == 4:
        assert_one_line_error(result, 4, "No space left on device")
    assert len(written) == 5 and list(tmp_path.iterdir()) == []


def test_a_read_only_directory_is_the_machines_refusal(tiny_dir, cli, tmp_path, monkeypatch):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o555)
    try:
        if os.access(target, os.W_OK):  # root writes anywhere: the kernel's refusal, as others get it
            from lmgen.formats import files

            real_open = os.open

            def refused(path, *args, **kwargs):
                if str(path).startswith(str(target)):
                    raise PermissionError(errno.EACCES, "Permission denied")
                return real_open(path, *args, **kwargs)

            monkeypatch.setattr(files.os, "open", refused)
        assert_one_line_error(cli("quantize", str(tiny_dir), str(target / "out.gguf"), "--type", "q8_0"), 4,
                              "cannot write to")
        assert list(target.iterdir()) == []
    finally:
        target.chmod(0o755)


def test_quantize_never_imports_torch(tiny_dir, tmp_path):
    code = ("import sys; from lmgen.cli.main import run; "
            f"assert run(['quantize', {str(tiny_dir)!r}, {str(tmp_path / 'o.gguf')!r}, '--type', 'q4_1']) == 0; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- hostile GGUF sources


def quantize_case(path, out) -> str:
    """'ok' or the LmgenError's class; any other exception (or a hang) fails the test."""
    from test_gguf_fuzz import CASE_SECONDS, deadline

    from lmgen.errors import LmgenError
    from lmgen.formats.gguf.quantize import quantize

    try:
        with deadline(CASE_SECONDS):
            quantize(path, out, "q4_0")
        return "ok"
    except LmgenError as exc:
        assert "\n" not in str(exc), f"a multi-line error: {exc!r}"
        assert not out.exists()
        return type(exc).__name__


def test_fuzzed_gguf_sources_end_in_lmgen_errors(tiny_gguf, tmp_path):
    import random
    from collections import Counter

    from test_gguf_fuzz import (ITERATIONS, SEED, header_length, mutate_bytes, mutate_metadata, mutate_tensors,
                                tiny_metadata, tiny_tensors, write_gguf)

    rng, counts = random.Random(SEED + 2), Counter()
    data, header_end = tiny_gguf.read_bytes(), header_length(tiny_gguf)
    for i in range(max(ITERATIONS // 4, 20)):
        path, kind = tmp_path / f"case{i}.gguf", rng.choice(["metadata", "tensors", "bytes"])
        meta, tensors = tiny_metadata(), tiny_tensors()
        if kind == "bytes":
            path.write_bytes(mutate_bytes(rng, data, header_end)[0])
        else:
            if kind == "metadata":
                mutate_metadata(rng, meta)
            else:
                mutate_tensors(rng, tensors)
            try:
                write_gguf(path, meta, tensors)
            except Exception:  # noqa: BLE001 (a value GGUFWriter cannot write)
                continue
        counts[quantize_case(path, tmp_path / f"out{i}.gguf")] += 1
    assert counts["ok"] and sum(counts.values()) > counts["ok"], counts
    no_leftovers(tmp_path)


def test_hostile_tables_and_non_finite_blocks_are_refused_naming_the_tensor(typed_ggufs, tmp_path):
    import random

    from test_gguf_fuzz import SEED, header_length, mutate_layout, mutate_values, tensor_table

    from lmgen.errors import CheckpointError
    from lmgen.formats.gguf.quantize import quantize

    rng = random.Random(SEED + 3)
    for i in range(20):
        kind = rng.choice(sorted(typed_ggufs))
        data, table = typed_ggufs[kind].read_bytes(), tensor_table(typed_ggufs[kind])
        mutate = rng.choice([lambda: mutate_layout(rng, data, table, header_length(typed_ggufs[kind])),
                             lambda: mutate_values(rng, data, table)])
        mutated, what, name, expected = mutate()
        (tmp_path / f"case{i}.gguf").write_bytes(mutated)
        with pytest.raises(CheckpointError, match=expected) as refused:
            quantize(tmp_path / f"case{i}.gguf", tmp_path / f"out{i}.gguf", "q8_0")
        assert name in str(refused.value), what
        assert not (tmp_path / f"out{i}.gguf").exists()
    no_leftovers(tmp_path)
