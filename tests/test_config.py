"""ModelConfig from TOML and from Hugging Face config.json, and its validation."""

import json
from pathlib import Path

import pytest
from conftest import tiny_hf_config

from lmgen.config.model_config import ModelConfig
from lmgen.errors import ConfigError, LmgenError
from lmgen.formats.config_file import load_config_file, load_toml
from lmgen.formats.hf_config import from_hf

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral"])
def test_hf_configs_translate(family):
    cfg = from_hf(tiny_hf_config(family).to_dict())
    assert cfg.family == family
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads) == (64, 2, 4)
    assert cfg.n_kv_heads == (4 if family == "gpt2" else 2)
    assert cfg.norm == ("layernorm" if family == "gpt2" else "rmsnorm")
    assert cfg.positions == ("learned" if family == "gpt2" else "rope")
    assert cfg.mlp == ("plain" if family == "gpt2" else "gated")
    assert cfg.qkv_bias == (family in ("gpt2", "qwen2"))
    assert cfg.sliding_window == (16 if family == "mistral" else None)


def test_shipped_toml_configs_load():
    names = sorted(p.name for p in CONFIGS.glob("*.toml"))
    assert "gpt2-small.toml" in names and "smollm2-135m.toml" in names
    for path in CONFIGS.glob("*.toml"):
        assert isinstance(load_toml(path), ModelConfig)


def test_unknown_model_type_lists_the_supported_ones():
    with pytest.raises(ConfigError, match=r"model_type 'bert' .*gpt2, llama, mistral, qwen2, qwen3, gemma2"):
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


def write_config(tmp_path, text: str) -> Path:
    path = tmp_path / "config.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("data", [[1, 2], "a string", None, 3])
def test_config_json_that_is_not_an_object(tmp_path, data):
    with pytest.raises(LmgenError, match="must hold an object"):
        load_config_file(write_config(tmp_path, json.dumps(data)))


def test_deeply_nested_config_json(tmp_path):
    with pytest.raises(LmgenError, match="nested too deeply|not valid JSON"):
        load_config_file(write_config(tmp_path, '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"))


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(rope_parameters=[1, 2]), "rope_parameters"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": "abc"}), "rope_theta"),
        (dict(rope_parameters=None, rope_theta="abc"), "rope_theta"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": 0}), "rope_theta"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": -5.0}), "rope_theta"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": float("nan")}), "rope_theta"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": float("inf")}), "rope_theta"),
        (dict(eos_token_id={"id": 2}), "eos_token_id"),
        (dict(eos_token_id=[2, "x"]), "eos_token_id"),
        (dict(bos_token_id="1"), "bos_token_id"),
        (dict(num_hidden_layers=1_000_000_000), "n_layers"),
        (dict(num_hidden_layers=2.0), "num_hidden_layers"),
        (dict(num_hidden_layers="2"), "num_hidden_layers"),
        (dict(num_hidden_layers=True), "num_hidden_layers"),
        (dict(hidden_size=2**40), "d_model"),
        (dict(max_position_embeddings=-8), "max_context"),
        (dict(tie_word_embeddings="yes"), "tie_word_embeddings"),
        (dict(attention_bias=1), "attention_bias"),
        (dict(rms_norm_eps=float("nan")), "norm_eps"),
        (dict(rms_norm_eps="small"), "rms_norm_eps"),
        (dict(num_attention_heads=0), "n_heads"),
        (dict(rope_scaling="linear"), "rope_scaling"),
    ],
)
def test_hostile_config_fields_are_refused_naming_the_field(change, field):
    hf = {**tiny_hf_config("llama").to_dict(), **change}
    with pytest.raises(ConfigError, match=field):
        from_hf(hf)


def test_toml_config_with_wrong_types_is_refused(tmp_path):
    text = (CONFIGS / "smollm2-135m.toml").read_text().replace("tied_embeddings = true", 'tied_embeddings = "yes"')
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match="tied_embeddings"):
        load_toml(tmp_path / "c.toml")


@pytest.mark.parametrize("change", [dict(eos_token_id=5000), dict(bos_token_id=50256, eos_token_id=[50256, 256]),
                                    dict(bos_token_id=-1)])
def test_token_ids_beyond_the_vocabulary_are_noted_and_ignored(tmp_path, change, cli):
    """A small config keeping GPT-2's 50256 runs, as in transformers: the model can never produce
    that id, so it is harmless; loading says so on stderr and leaves it out of the end ids."""
    import shutil

    from conftest import save_tiny

    from lmgen.engine.load import load

    save_tiny("llama", tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, **change}))
    lm = load(tmp_path)
    assert all(0 <= i < lm.config.vocab_size for i in lm.eos_ids)
    assert any("beyond the vocabulary" in note for note in lm.notes)
    result = cli("generate", "-m", str(tmp_path), "-n", "3", "Hello")
    assert result.returncode == 0, result.stderr
    assert b"lmgen: note: " in result.stderr and b"can never produce it" in result.stderr
    shutil.rmtree(tmp_path)
