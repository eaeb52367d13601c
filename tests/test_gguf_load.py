"""GGUF files run as they are (lmgen.gguf_load): blocks used as stored, equal to their fp32 expansion."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GGML

import lmgen
from lmgen import gguf_import
from lmgen.checkpoint import load_model
from lmgen.gguf_import import convert_gguf
from lmgen.linear import BlockEmbedding, BlockLinear

from test_families import save_family
from test_gguf_arch import CASES, write_like_llama_cpp

FORMATS = {GGML.Q8_0: "q8_0", GGML.Q4_0: "q4_0", GGML.Q4_1: "q4_1"}


def logits_of(model, tokens):
    with torch.inference_mode():
        return model(tokens)


@pytest.fixture(scope="module", params=[("llama-llama3", GGML.Q4_1), ("llama-llama3", GGML.Q8_0),
                                        ("phi3", GGML.Q4_0), ("qwen3", GGML.Q5_0)])
def written(request, tmp_path_factory):
    case, qtype = request.param
    model_type, overrides = CASES[case]
    root = tmp_path_factory.mktemp(f"{case}-{qtype.name}")
    reference = save_family(model_type, overrides, root / "hf")
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
    assert formats == {FORMATS.get(qtype, "q8_0")}  # Q5_0 is re-quantized to Q8_0
    assert isinstance(model.embed, BlockEmbedding)
    assert not any(p.dim() == 2 for p in model.parameters())  # no float matrix anywhere
    tokens = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(4))
    expected = logits_of(expanded, tokens)
    got = logits_of(model, tokens)
    if qtype in FORMATS:  # the same weights: only the activations' 16-bit rounding differs
        assert (got - expected).abs().max().item() < 2e-3 * expected.abs().max().item()
        assert not lm.notes
    else:
        assert len(lm.notes) == 1 and "Q5_0 re-quantized to q8_0" in lm.notes[0]
        assert (got - expected).abs().max().item() < 0.05 * expected.abs().max().item()
    cache = model.new_cache(1, 32)
    assert model.plan is not None  # decoding runs native
    del cache


def mapped_file(address: int) -> str | None:
    """The file whose mapping holds ``address`` in this process (/proc/self/maps), if any."""
    for line in open("/proc/self/maps"):
        fields = line.split()
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) > 5 else None
    return None


def test_as_stored_means_views_of_the_file(written, monkeypatch, tmp_path):
    """A weight that needs no reordering (an MLP's) is the file's own mapped bytes, not a copy;
    a re-quantized one is a copy by nature."""
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    qtype, path, _ = written
    lm = lmgen.load(path)
    for weight in (lm.model.blocks[0].mlp.down.weight, lm.model.embed.weight):
        assert (mapped_file(weight.data_ptr()) == str(path.resolve())) == (qtype in FORMATS)


def test_second_load_reads_the_cache_not_the_header(written, monkeypatch, tmp_path):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path))
    _, path, _ = written
    lmgen.load(path)
    monkeypatch.setattr(gguf_import, "open_gguf", lambda *_: pytest.fail("parsed the header again"))
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
