"""Which files of a Hub repo a reference means (lmgen.formats.hub.choose), over random listings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgen.errors import CheckpointError
from lmgen.formats.hub.choose import (
    DEFAULT_QUANT,
    RepoFile,
    bits,
    checkpoint_files,
    choose_gguf,
    gguf_models,
    tag_of,
)

TAGS = ["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_XS", "IQ3_M", "F16", "BF16"]


@st.composite
def listings(draw):
    """A GGUF repo's files: some quantizations (some split in parts), a README, a projector."""
    tags = draw(st.lists(st.sampled_from(TAGS), min_size=1, max_size=6, unique=True))
    files = [RepoFile("README.md", 10), RepoFile("mmproj-model-f16.gguf", 999)]
    for tag in tags:
        name = f"Model-7B-{tag if draw(st.booleans()) else tag.lower()}"
        size = draw(st.integers(1, 10**10))
        parts = draw(st.sampled_from([1, 1, 2, 3]))
        if parts == 1:
            files.append(RepoFile(f"{name}.gguf", size))
        else:
            files += [RepoFile(f"{name}-{i:05d}-of-{parts:05d}.gguf", size + i) for i in range(1, parts + 1)]
    return tags, draw(st.permutations(files))


@given(listings(), st.sampled_from(TAGS), st.booleans())
def test_a_quant_picks_the_file_with_that_tag_or_lists_them(listing, wanted, lower):
    tags, files = listing
    if wanted in tags:
        model, note = choose_gguf("o/r", files, wanted.lower() if lower else wanted, None)
        assert model.tag == wanted and note is None
        assert [p.name for p in model.parts] == sorted(p.name for p in model.parts)  # parts in order
    else:
        with pytest.raises(CheckpointError) as refused:
            choose_gguf("o/r", files, wanted, None)
        assert all(t in str(refused.value) for t in tags)  # the ones there are, listed


@given(listings())
def test_without_a_quant_q4_k_m_else_the_smallest_at_4_bits(listing):
    tags, files = listing
    model, note = choose_gguf("o/r", files, None, None)
    assert note and model.name in note
    models = gguf_models(files)
    if DEFAULT_QUANT in tags:
        assert model.tag == DEFAULT_QUANT
    elif any(bits(m.tag) >= 4 for m in models):
        assert bits(model.tag) >= 4
        assert model.size == min(m.size for m in models if bits(m.tag) >= 4)
    assert "mmproj" not in model.name


def test_a_split_file_with_a_part_missing_is_refused():
    files = [RepoFile("m-Q8_0-00001-of-00003.gguf", 1), RepoFile("m-Q8_0-00003-of-00003.gguf", 1)]
    with pytest.raises(CheckpointError, match="2 of its 3 parts"):
        choose_gguf("o/r", files, "Q8_0", None)


@pytest.mark.parametrize("name, tag", [("Qwen3-0.6B-Q4_K_M.gguf", "Q4_K_M"), ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
                                       ("q-0.5b-q4_k_m-00001-of-00002.gguf", "Q4_K_M"), ("model-f16.gguf", "F16"),
                                       ("L-IQ4_XS.gguf", "IQ4_XS"), ("Qwen2.5-0.5B.gguf", None)])
def test_tags_read_from_names(name, tag):
    assert tag_of(name) == tag


def test_a_checkpoint_repo_fetches_config_tokenizer_template_and_weights_only():
    files = [RepoFile(n, 1) for n in ("config.json", "tokenizer.json", "model-00001-of-00002.safetensors",
                                      "model-00002-of-00002.safetensors", "model.safetensors.index.json",
                                      "pytorch_model.bin", "original/consolidated.00.pth", "onnx/model.onnx",
                                      "README.md", "chat_template.jinja", "tokenizer_config.json")]
    assert sorted(f.name for f in checkpoint_files(files)) == sorted([
        "config.json", "tokenizer.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "chat_template.jinja", "tokenizer_config.json"])
