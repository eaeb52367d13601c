"""ModelConfig from TOML and from Hugging Face config.json, and its validation."""

from pathlib import Path

import pytest

from lmgen.config import ModelConfig, from_hf, load_toml
from lmgen.errors import ConfigError

from conftest import tiny_hf_config

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral"])
def test_hf_configs_translate(family):
    cfg = from_hf(tiny_hf_config(family).to_dict())
    assert cfg.family == family
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads) == (64, 2, 4)
    assert cfg.n_kv_heads == (4 if family == "gpt2" else 2)
    assert cfg.norm == ("layernorm" if family == "gpt2" else "rmsnorm")
    assert cfg.positions == ("learned" if family == "gpt2" else "rope")
    assert cfg.mlp == ("gelu" if family == "gpt2" else "swiglu")
    assert cfg.qkv_bias == (family in ("gpt2", "qwen2"))
    assert cfg.sliding_window == (16 if family == "mistral" else None)


def test_shipped_toml_configs_load():
    names = sorted(p.name for p in CONFIGS.glob("*.toml"))
    assert "gpt2-small.toml" in names and "smollm2-135m.toml" in names
    for path in CONFIGS.glob("*.toml"):
        assert isinstance(load_toml(path), ModelConfig)


def test_unknown_model_type_lists_the_supported_ones():
    with pytest.raises(ConfigError, match=r"model_type 'bert' .*gpt2, llama, qwen2, mistral"):
        from_hf({"model_type": "bert"})


def test_missing_hf_field_is_named():
    hf = tiny_hf_config("llama").to_dict()
    del hf["intermediate_size"]
    with pytest.raises(ConfigError, match="intermediate_size"):
        from_hf(hf)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(hidden_size=66), "hidden_size"),  # 66 is not divisible by 4 heads
        (dict(num_key_value_heads=3), "n_kv_heads"),  # 3 does not divide 4
        (dict(num_hidden_layers=0), "n_layers"),
        (dict(rms_norm_eps=-1.0), "norm_eps"),
    ],
)
def test_impossible_combinations_name_the_field(change, field):
    hf = {**tiny_hf_config("llama").to_dict(), **change}
    hf.pop("head_dim", None)
    with pytest.raises(ConfigError, match=field):
        from_hf(hf)


def test_toml_with_unknown_field_is_refused(tmp_path):
    text = (CONFIGS / "smollm2-135m.toml").read_text() + "n_experts = 8\n"
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match="n_experts"):
        load_toml(tmp_path / "c.toml")
