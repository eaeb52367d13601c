"""GGUF files of today's architectures, written as llama.cpp's converter writes them, imported
back: the same logits as the transformers model they were made from.

The writer below restates what convert_hf_to_gguf.py does per architecture (metadata keys, Q/K
row permutation for llama and smollm3, Gemma's norms stored as 1 + weight, Phi-3's fused
tensors and long/short rotary factors, Llama 3's rope_freqs); tensor names come from the gguf
library's own Hugging Face → GGUF name map, not from lmgen's.
"""

import math

import numpy as np
import pytest
import torch
from gguf import MODEL_ARCH, GGMLQuantizationType, GGUFWriter, RopeScalingType, get_tensor_name_map, quants
from test_families import GEMMA3_ROPE, save_family
from test_gguf_fuzz import MERGES, tiny_vocab
from test_gguf_tokenizer import WORDS

from lmgen.engine.load_checkpoint import load_model
from lmgen.formats.gguf.reader import convert_gguf

CASES = {
    "llama-llama3": ("llama", dict(rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                                        low_freq_factor=1.0, high_freq_factor=4.0,
                                                        original_max_position_embeddings=8192))),
    "llama-yarn": ("llama", dict(rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                                      original_max_position_embeddings=32))),
    "qwen3": ("qwen3", dict(head_dim=32)),
    "gemma2": ("gemma2", dict(head_dim=32, num_hidden_layers=3, sliding_window=16, query_pre_attn_scalar=32,
                              attn_logit_softcapping=2.0, final_logit_softcapping=1.5)),
    "gemma3": ("gemma3_text", dict(head_dim=32, num_hidden_layers=6, sliding_window=16, query_pre_attn_scalar=32,
                                   final_logit_softcapping=1.5,
                                   rope_parameters=GEMMA3_ROPE)),
    "phi3": ("phi3", dict(partial_rotary_factor=0.5, original_max_position_embeddings=32,
                          rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5,
                                               short_factor=[1.0, 1.2, 1.5, 2.0], long_factor=[1.0, 2.0, 4.0, 8.0]))),
    "olmo2": ("olmo2", dict()),
    "smollm3": ("smollm3", dict(num_hidden_layers=4)),
}
GGUF_ARCH = {"llama": "llama", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3",
             "olmo2": "olmo2", "smollm3": "smollm3"}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_freqs(p: dict, head_dim: int, theta: float) -> np.ndarray:
    """LlamaModel.generate_extra_tensors: the divisor of each rotary frequency."""
    low_wavelen = 8192 / p["low_freq_factor"]
    high_wavelen = 8192 / p["high_freq_factor"]
    factors = []
    for freq in 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(p["factor"])
        else:
            smooth = (8192 / wavelen - p["low_freq_factor"]) / (p["high_freq_factor"] - p["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / p["factor"] + smooth))
    return np.array(factors, dtype=np.float32)


RANDOM_BLOCKS = {GGMLQuantizationType.Q4_K: "q4_k", GGMLQuantizationType.Q5_K: "q5_k", GGMLQuantizationType.Q6_K: "q6_k"}


def stored_blocks(array: np.ndarray, qtype, seed: int):
    """(blocks, qtype) for a matrix: the gguf library's quantization, or, for the K-quants it
    cannot make, random blocks of the matrix's shape (rows not a multiple of 256 fall back to
    Q8_0, as llama.cpp's quantizer does with them)."""
    from test_kquant import random_blocks

    if qtype not in RANDOM_BLOCKS:
        return quants.quantize(array, qtype), qtype
    if array.shape[-1] % 256:
        return quants.quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    scale = 2e-4 if qtype == GGMLQuantizationType.Q6_K else 1e-3
    return random_blocks(RANDOM_BLOCKS[qtype], array.shape[0], array.shape[1], seed, scale).numpy(), qtype


def write_like_llama_cpp(reference, model_type: str, path, sentencepiece: bool = False, qtype=None) -> None:
    """A GGUF file as llama.cpp's converter writes one; with ``qtype``, its matrices in that format."""
    cfg, name = reference.config, GGUF_ARCH[model_type]
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer = GGUFWriter(str(path), arch=name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if model_type != "phi3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)
    if model_type != "gemma2":
        writer.add_rope_freq_base(rope["rope_theta"])
    tensors = {}
    if model_type in ("llama", "smollm3"):
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    if rope["rope_type"] == "llama3":
        tensors["rope_freqs.weight"] = llama3_rope_freqs(rope, head_dim, rope["rope_theta"])
    elif rope["rope_type"] in ("linear", "yarn"):
        writer.add_rope_scaling_type(RopeScalingType(rope["rope_type"]))
        writer.add_rope_scaling_factor(rope["factor"])
        if rope["rope_type"] == "yarn":
            writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    if model_type == "gemma2":
        writer.add_float32("gemma2.attn_logit_softcapping", cfg.attn_logit_softcapping)
        writer.add_float32("gemma2.final_logit_softcapping", cfg.final_logit_softcapping)
    if model_type.startswith("gemma"):
        writer.add_sliding_window(cfg.sliding_window)
    if model_type == "gemma3_text":
        writer.add_float32("gemma3.final_logit_softcapping", cfg.final_logit_softcapping)
        writer.add_float32("gemma3.rope.freq_base_swa", cfg.rope_parameters["sliding_attention"]["rope_theta"])
    if model_type == "phi3":
        writer.add_rope_dimension_count(int(rope["partial_rotary_factor"] * cfg.hidden_size) // cfg.num_attention_heads)
        writer.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings)
        scale = cfg.max_position_embeddings / cfg.original_max_position_embeddings
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(cfg.original_max_position_embeddings)))
        tensors["rope_factors_long.weight"] = np.array(rope["long_factor"], dtype=np.float32)
        tensors["rope_factors_short.weight"] = np.array(rope["short_factor"], dtype=np.float32)
    if sentencepiece:  # Gemma's own kind of tokenizer: scores, byte fallback, no merges
        tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + WORDS
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_types([3, 3, 3, 2] + [6] * 256 + [1] * len(WORDS))
        writer.add_token_scores([0.0] * 260 + [-float(i) for i in range(len(WORDS))])
        writer.add_bos_token_id(2)
        writer.add_eos_token_id(1)
        writer.add_add_bos_token(True)
    else:
        tokens, types = tiny_vocab()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(MERGES)
        writer.add_eos_token_id(256)
    names = get_tensor_name_map(MODEL_ARCH[name.upper()], cfg.num_hidden_layers)
    for hf_name, tensor in reference.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # a tied head is not in the checkpoint, so not in the GGUF file
        base, suffix = hf_name.rsplit(".", 1)
        array = tensor.numpy().astype(np.float32)
        if model_type in ("llama", "smollm3") and base.endswith(("q_proj", "k_proj")):
            heads = cfg.num_attention_heads if base.endswith("q_proj") else cfg.num_key_value_heads
            array = llama_cpp_permute(array, heads)
        if model_type.startswith("gemma") and hf_name.endswith("norm.weight"):
            array = array + 1  # Gemma's norms scale by (1 + weight): llama.cpp stores the sum
        tensors[f"{names.get_name(base)}.{suffix}"] = array
    for seed, (gguf_name, array) in enumerate(tensors.items()):
        if qtype is not None and array.ndim == 2:
            blocks, stored_type = stored_blocks(array, qtype, seed)
            writer.add_tensor(gguf_name, blocks, raw_dtype=stored_type)
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module", params=sorted(CASES))
def imported(request, tmp_path_factory):
    model_type, overrides = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    reference = save_family(model_type, overrides, root / "hf")
    write_like_llama_cpp(reference, model_type, root / "model.gguf")
    convert_gguf(root / "model.gguf", root / "converted")
    model, cfg, _ = load_model(root / "converted")
    return request.param, reference, model


def test_imported_gguf_logits_match_the_original(imported):
    case, reference, model = imported
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (model(tokens) - reference(tokens).logits).abs().max().item()
    print(f"{case} from GGUF: max abs logit diff {diff:.2e}")
    assert diff < 1e-4


FEATURES = {"gemma2": "soft-capping", "gemma3": "sliding window", "phi3": "rotary positions", "olmo2": "q/k norm",
            "qwen3": "q/k norm", "smollm3": "rotary positions", "llama-llama3": "rotary positions",
            "llama-yarn": "rotary positions"}


def test_inspect_reads_the_gguf_as_convert_does(imported, tmp_path_factory):
    from lmgen.formats.inspect import report

    case, _, model = imported
    gguf = next(tmp_path_factory.getbasetemp().glob(f"{case}*/model.gguf"))
    info = report(gguf)
    assert info["config"] == model.cfg.to_dict()
    assert FEATURES[case] in info["features"]
    assert info["parameters"]["total"] == sum(p.numel() for p in model.parameters())


def test_a_gemma_gguf_with_its_sentencepiece_tokenizer_converts_and_generates(tmp_path, cli):
    from transformers import AutoTokenizer

    from lmgen.engine.generation import GenerationSettings, decode_loop, load

    model_type, overrides = CASES["gemma3"]
    vocab = 4 + 256 + len(WORDS)  # llama.cpp cuts Gemma 3's embedding to the tokenizer's size
    reference = save_family(model_type, {**overrides, "vocab_size": vocab}, tmp_path / "hf")
    write_like_llama_cpp(reference, model_type, tmp_path / "model.gguf", sentencepiece=True)
    result = cli("convert", str(tmp_path / "model.gguf"), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    expected_ids = AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")("The cat sat")["input_ids"]
    lm = load(tmp_path / "out")
    assert lm.tokenizer.encode("The cat sat") == expected_ids
    reference.generation_config.eos_token_id = None
    reference.generation_config.pad_token_id = 0
    expected = reference.generate(torch.tensor([expected_ids]), max_new_tokens=8, do_sample=False)[0, len(expected_ids):]
    settings = GenerationSettings(max_new_tokens=8)
    assert [int(t) for t, _ in decode_loop(lm.model, expected_ids, settings)] == expected.tolist()
    result = cli("generate", "--model", str(tmp_path / "out"), "-n", "4", "The cat sat")
    assert result.returncode == 0 and result.stdout, result.stderr
