"""config.json as the Hub ships it for today's small models (the older rope_scaling format; the
format transformers 5 writes is read in test_families.py)."""

import pytest

from lmgen.errors import ConfigError
from lmgen.formats.hf_config import from_hf

LLAMA_3_2_1B = {
    "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
    "num_hidden_layers": 16, "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "attention_bias": False,
}
GEMMA_3_1B = {
    "model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912, "num_attention_heads": 4,
    "num_hidden_layers": 26, "num_key_value_heads": 1, "head_dim": 256, "max_position_embeddings": 32768,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "vocab_size": 262144,
    "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None, "attn_logit_softcapping": None,
    "bos_token_id": 2, "eos_token_id": [1, 106],
}
PHI_4_MINI = {
    "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 24,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096, "partial_rotary_factor": 0.75, "rope_theta": 10000.0,
    "rope_scaling": {"type": "longrope", "long_factor": [1.0 + i / 8 for i in range(48)],
                     "short_factor": [1.0] * 48},
    "sliding_window": 262144, "tie_word_embeddings": True, "vocab_size": 200064, "rms_norm_eps": 1e-05,
}
SMOLLM3_3B = {
    "model_type": "smollm3", "hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16,
    "num_hidden_layers": 36, "num_key_value_heads": 4, "max_position_embeddings": 65536, "rope_theta": 5000000.0,
    "no_rope_layers": [int((i + 1) % 4 != 0) for i in range(36)], "use_sliding_window": False,
    "sliding_window": None, "vocab_size": 128256, "rms_norm_eps": 1e-06,
}


def test_llama_3_2_reads_llama3_rope_scaling():
    cfg = from_hf(LLAMA_3_2_1B)
    assert cfg.rope_theta == 500000.0 and cfg.tied_embeddings
    assert cfg.rope_scaling == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def test_gemma_3_slides_five_layers_in_six_with_their_own_rope_theta():
    cfg = from_hf(GEMMA_3_1B)
    full = [i for i in range(26) if cfg.layer_window(i) is None]
    assert full == [5, 11, 17, 23] and cfg.layer_window(0) == 512
    assert [cfg.layer_rope(i) for i in (0, 5)] == ["local", "global"]
    assert (cfg.rope_theta, cfg.local_rope_theta) == (1e6, 10000.0)
    assert (cfg.norm_placement, cfg.norm_offset, cfg.qk_norm) == ("sandwich", 1.0, "head")
    assert cfg.attn_scale == 256**-0.5 and cfg.embed_scale == 1152**0.5
    assert cfg.activation == "gelu_tanh" and cfg.tied_embeddings and cfg.eos_token_ids == [1, 106]


def test_phi_4_mini_rotates_three_quarters_with_longrope():
    cfg = from_hf(PHI_4_MINI)
    assert cfg.head_dim == 128 and cfg.rope_dim == 96
    assert cfg.rope_scaling["rope_type"] == "longrope"
    assert cfg.rope_scaling["original_max_position_embeddings"] == 4096
    assert cfg.layer_window(0) == 262144 and cfg.sliding_layers is None


def test_smollm3_has_no_positions_in_every_fourth_layer():
    cfg = from_hf(SMOLLM3_3B)
    assert cfg.nope_layers == [3, 7, 11, 15, 19, 23, 27, 31, 35]
    assert cfg.layer_rope(3) is None and cfg.layer_rope(4) == "global"
    assert cfg.sliding_window is None and cfg.tied_embeddings


@pytest.mark.parametrize("rope_type", ["mrope", "su-per", 3])
def test_an_unknown_rope_type_is_named(rope_type):
    hf = dict(LLAMA_3_2_1B, rope_scaling={"rope_type": rope_type, "factor": 2.0})
    with pytest.raises(ConfigError, match=f"rope_type {rope_type!r} is not supported"):
        from_hf(hf)


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "needs low_freq_factor"),
    ({"rope_scaling": {"rope_type": "linear", "factor": -2.0}}, "factor must be a finite positive"),
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}, "must be 32"),
    ({"partial_rotary_factor": float("nan")}, "partial_rotary_factor"),
    ({"model_type": "gemma2", "query_pre_attn_scalar": 0}, "query_pre_attn_scalar must be a finite positive"),
    ({"model_type": "gemma2", "sliding_window": 8, "layer_types": ["chunked_attention"] * 16}, "layer_types"),
    ({"model_type": "smollm3", "no_rope_layers": [1, 2]}, "no_rope_layers"),
    ({"model_type": "gemma3"}, "vision"),
])
def test_bad_family_fields_are_config_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        from_hf({**LLAMA_3_2_1B, **change})


GEMMA_2 = {**GEMMA_3_1B, "model_type": "gemma2", "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
           "sliding_window": 4096}
YARN = {**LLAMA_3_2_1B, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192,
                                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.5}}
DYNAMIC = {**LLAMA_3_2_1B, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
OLMO_2 = {**LLAMA_3_2_1B, "model_type": "olmo2", "rope_scaling": None}
QWEN_3 = {**LLAMA_3_2_1B, "model_type": "qwen3", "rope_scaling": None, "use_sliding_window": True,
          "sliding_window": 4096, "max_window_layers": 8}
FUZZ_BASES = [LLAMA_3_2_1B, GEMMA_3_1B, GEMMA_2, PHI_4_MINI, SMOLLM3_3B, YARN, DYNAMIC, OLMO_2, QWEN_3]


def test_fuzzed_family_configs_fail_cleanly():
    """Each config.json mutated in one field: a ModelConfig whose rotary tables compute, or one
    ConfigError — never another exception (which the CLI would report as a bug, exit 1)."""
    import copy
    import random

    import torch
    from test_fuzz import ITERATIONS, mutate_json

    from lmgen.config.rope import frequencies

    rng, outcomes = random.Random(7), {"ok": 0, "refused": 0}
    for i in range(ITERATIONS):
        hf = mutate_json(rng, copy.deepcopy(FUZZ_BASES[i % len(FUZZ_BASES)]))
        try:
            cfg = from_hf(hf)
        except ConfigError:
            outcomes["refused"] += 1
            continue
        for kind in {cfg.layer_rope(layer) for layer in range(cfg.n_layers)} - {None}:
            for length in (1, cfg.max_context):
                inv_freq, attention = frequencies(cfg, kind, length)
                assert inv_freq.shape == (cfg.rotary_dim // 2,) and inv_freq.dtype == torch.float32
        outcomes["ok"] += 1
    assert outcomes["ok"] > ITERATIONS // 10 and outcomes["refused"] > ITERATIONS // 10, outcomes
