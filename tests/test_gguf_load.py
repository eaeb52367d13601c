"""GGUF files run as they are (lmgen.engine.load_gguf): blocks used as stored, equal to their fp32 expansion."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GGML
from gguf import GGUFReader
from test_families import save_family
from test_gguf_arch import CASES, write_like_llama_cpp
from test_gguf_fuzz import tiny_gguf  # noqa: F401 (a fixture)

import lmgen
from lmgen.engine.load_checkpoint import load_model
from lmgen.formats.gguf import index as gguf_index
from lmgen.formats.gguf import metadata
from lmgen.formats.gguf.reader import convert_gguf
from lmgen.model import quant
from lmgen.model.linear import BlockEmbedding, BlockLinear

FORMATS = {GGML.Q8_0: "q8_0", GGML.Q4_0: "q4_0", GGML.Q4_1: "q4_1", GGML.Q5_0: "q5_0", GGML.Q5_1: "q5_1",
           GGML.Q4_K: "q4_k", GGML.Q5_K: "q5_k", GGML.Q6_K: "q6_k"}  # every format lmgen runs as stored
K_SIZES = dict(hidden_size=256, intermediate_size=512)  # rows of K-quants: multiples of 256 values


def logits_of(model, tokens):
    with torch.inference_mode():
        return model(tokens)


@pytest.fixture(scope="module", params=[("llama-llama3", GGML.Q4_1), ("llama-llama3", GGML.Q8_0),
                                        ("phi3", GGML.Q4_0), ("qwen3", GGML.Q5_0), ("llama-llama3", GGML.Q5_1),
                                        ("llama-llama3", GGML.Q4_K), ("qwen3", GGML.Q5_K), ("llama-llama3", GGML.Q6_K),
                                        ("llama-llama3", GGML.TQ2_0)])
def written(request, tmp_path_factory):
    case, qtype = request.param
    model_type, overrides = CASES[case]
    root = tmp_path_factory.mktemp(f"{case}-{qtype.name}")
    sizes = K_SIZES if qtype.name.endswith("_K") or qtype == GGML.TQ2_0 else {}
    reference = save_family(model_type, {**overrides, **sizes}, root / "hf")
    write_like_llama_cpp(reference, model_type, root / "model.gguf", qtype=qtype)
    convert_gguf(root / "model.gguf", root / "expanded")  # every tensor dequantized to fp32
    expanded, _, _ = load_model(root / "expanded")
    return qtype, root / "model.gguf", expanded


def test_blocks_are_used_as_stored_and_match_the_fp32_expansion(written, monkeypatch, tmp_path):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    qtype, path, expanded = written
    lm = lmgen.load(path)  # no dtype: as stored
    model = lm.model
    formats = {m.format.name for m in model.modules() if isinstance(m, (BlockLinear, BlockEmbedding))}
    stored = {GGML(t.tensor_type).name.lower() for t in GGUFReader(path).tensors if len(t.shape) == 2}
    assert formats == ({"q8_0"} if qtype not in FORMATS else stored)  # TQ2_0 is re-quantized to Q8_0
    assert isinstance(model.embed, BlockEmbedding)
    assert not any(p.dim() == 2 for p in model.parameters())  # no float matrix anywhere
    tokens = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(4))
    expected = logits_of(expanded, tokens)
    got = logits_of(model, tokens)
    if qtype in FORMATS:  # the same weights: only the activations' 16-bit rounding differs
        assert (got - expected).abs().max().item() < 2e-3 * expected.abs().max().item()
        assert not lm.notes
    else:
        assert len(lm.notes) == 1 and "TQ2_0 re-quantized to q8_0" in lm.notes[0]
        assert (got - expected).abs().max().item() < 0.05 * expected.abs().max().item()
    cache = model.new_cache(1, 32)
    assert model.plan is not None  # decoding runs native
    del cache


def test_as_stored_means_the_files_own_blocks(written, monkeypatch, tmp_path):
    """A weight that needs no reordering (an MLP's, the embedding) holds the file's blocks byte
    for byte, packed for the kernels; a re-quantized one differs by nature."""
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    qtype, path, _ = written
    lm = lmgen.load(path)
    stored = {t.name: t.data for t in GGUFReader(path).tensors}
    for module, name in ((lm.model.blocks[0].mlp.down, "blk.0.ffn_down.weight"), (lm.model.embed, "token_embd.weight")):
        blocks = quant.unpack(module.weight, module.format, stored[name].shape[0])
        assert np.array_equal(blocks.numpy(), stored[name]) == (qtype in FORMATS)


def test_second_load_reads_the_cache_not_the_header(written, monkeypatch, tmp_path):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    _, path, _ = written
    lmgen.load(path)
    monkeypatch.setattr(metadata, "open_gguf", lambda *_: pytest.fail("parsed the header again"))
    lmgen.load(path)


def test_cli_runs_a_gguf_file_and_an_explicit_dtype_expands_it(written, cli, monkeypatch, tmp_path):
    qtype, path, _ = written
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    stored = cli("generate", "-m", str(path), "-n", "5", "--json", "hello")
    assert stored.returncode == 0, stored.stderr
    assert ("re-quantized" in stored.stderr.decode()) == (qtype not in FORMATS)
    expanded = cli("generate", "-m", str(path), "-n", "5", "--json", "--dtype", "float32", "hello")
    assert expanded.returncode == 0, expanded.stderr
    assert list((tmp_path / "gguf").glob("*-fp32/model.safetensors"))


TEXT = ("Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
        "associated documentation files (the Software), to deal in the Software without restriction, including "
        "without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell "
        "copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the "
        "following conditions: The above copyright notice and this permission notice shall be included in all "
        "copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY "
        "KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A "
        "PARTICULAR PURPOSE AND NONINFRINGEMENT.")


def token_log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    """log p of each actual next token of the text."""
    with torch.inference_mode():
        return torch.log_softmax(model(ids)[0, :-1].double(), -1).gather(1, ids[0, 1:, None])[:, 0]


def test_the_default_model_from_its_q4_1_blocks_equals_its_fp32_expansion(smollm2_dir, monkeypatch, tmp_path):
    """The issue's budget: mean |Δ log p| ≤ 0.01 against the fp32 expansion of the same blocks."""
    from lmgen.formats.paths import bundled_gguf

    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    blocks = lmgen.load(bundled_gguf())
    assert blocks.model.blocks[0].mlp.up.format.name == "q4_1" and blocks.model.embed.format.name == "q8_0"
    expanded, _, _ = load_model(smollm2_dir)
    ids = torch.tensor([blocks.encode(TEXT)])
    delta = (token_log_probs(blocks.model, ids) - token_log_probs(expanded, ids)).abs()
    print(f"default model, Q4_1 blocks vs fp32 expansion: mean |Δ log p| {delta.mean():.5f} over {ids.shape[1]} tokens")
    assert delta.mean() <= 0.01


def test_a_damaged_cache_entry_is_made_again(written, monkeypatch, tmp_path):
    """The cache holds lmgen's own reading of the file: if it is damaged, the file is read again."""
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    _, path, _ = written
    lmgen.load(path)
    table = gguf_index.cache_path(path) / gguf_index.TABLE
    good = table.read_text()
    for damage in ("{}", '{"architecture": "llama", "tensors": [{"name": 3}]}', "not json"):
        table.write_text(damage)
        lmgen.load(path)
        assert table.read_text() == good


@pytest.mark.parametrize("keep", [0.02, 0.7])  # the header cut short; the tensors cut short
def test_a_truncated_gguf_file_is_one_line_and_exit_3(tiny_gguf, cli, monkeypatch, tmp_path, keep):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    result = cli("generate", "-m", str(cut), "-n", "3", "hello")
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 3 and len(lines) == 1 and str(cut) in lines[0], result.stderr
    assert not result.stdout


def test_a_second_load_maps_the_packed_blocks_and_computes_the_same(written, monkeypatch, tmp_path):
    """The first load packs (and re-quantizes) into the cache; a later one maps that file, packs
    nothing, and gives the same logits bit for bit, and the same note; a damaged cache is packed
    again."""
    from lmgen.engine import gguf_packed

    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    qtype, path, _ = written
    tokens = torch.tensor([[1, 5, 9, 3, 7]])
    first = lmgen.load(path)
    packed_file = gguf_index.gguf_index(path) / gguf_packed.PACKED
    assert packed_file.is_file()
    monkeypatch.setattr(quant, "pack", lambda *a: pytest.fail("packed again"))
    again = lmgen.load(path)
    assert torch.equal(logits_of(again.model, tokens), logits_of(first.model, tokens))
    assert again.notes == first.notes
    monkeypatch.undo()
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    with open(packed_file, "r+b") as f:
        f.truncate(100)  # a cache cut short: not used, made again
    third = lmgen.load(path)
    assert torch.equal(logits_of(third.model, tokens), logits_of(first.model, tokens))
    assert packed_file.stat().st_size > 100


def test_generate_on_an_f32_gguf_prints_only_lmgens_lines(tiny_gguf, lmgen_exe, tmp_path):
    """torch warns that a tensor over the read-only map is not writable, once per process: so a
    process of its own, as a user runs it. stderr holds lmgen's lines only: none, then --stats'."""
    from conftest import run_lmgen

    env = {"LMGEN_HOME": str(tmp_path)}
    quiet = run_lmgen(lmgen_exe, "generate", "-m", str(tiny_gguf), "-n", "3", "hello", env=env)
    assert quiet.returncode == 0 and quiet.stdout and quiet.stderr == b"", quiet.stderr
    stats = run_lmgen(lmgen_exe, "generate", "-m", str(tiny_gguf), "-n", "3", "--stats", "hello", env=env)
    lines = stats.stderr.decode().splitlines()
    assert stats.returncode == 0 and len(lines) == 1 and lines[0].startswith("prompt "), stats.stderr


def test_a_q6_k_file_with_extreme_finite_scales_prints_no_text(tmp_path, cli, monkeypatch):
    """The issue's file: every Q6_K block's d set to 65504 (the largest fp16) — finite, so no NaN
    check fires, but the model's logits are degenerate: one line, exit 3, no text, no score."""
    from conftest import assert_one_line_error
    from test_gguf_fuzz import tensor_table

    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    model_type, overrides = CASES["llama-llama3"]
    reference = save_family(model_type, {**overrides, **K_SIZES}, tmp_path / "hf")
    write_like_llama_cpp(reference, model_type, tmp_path / "model.gguf", qtype=GGML.Q6_K)
    data = bytearray((tmp_path / "model.gguf").read_bytes())
    for t in tensor_table(tmp_path / "model.gguf").values():
        if t["type"] == GGML.Q6_K:
            for block in range(t["nbytes"] // 210):  # d: the last two bytes of each 210-byte block
                at = t["start"] + block * 210 + 208
                data[at: at + 2] = np.float16(65504).tobytes()
    (tmp_path / "extreme.gguf").write_bytes(bytes(data))
    for args in (["generate", "-n", "4", "hello"], ["score", "hello there"]):
        result = cli(args[0], "-m", str(tmp_path / "extreme.gguf"), *args[1:])
        assert_one_line_error(result, 3, "weights are broken")
        assert not result.stdout
