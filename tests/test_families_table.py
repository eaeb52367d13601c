"""The family table (lmgen/config/families.py) is the one source of family facts: every table read
from it names the same families, and each entry is whole — its config.json is read, its tensor
names cover the tensors its config implies, and its GGUF architecture (if any) names them the
same way. A family added to the table but not readable, loadable or importable everywhere fails."""

import pytest

from lmgen.config import families, layout, model_config
from lmgen.config.families import FAMILIES
from lmgen.errors import ConfigError
from lmgen.formats import hf_config
from lmgen.formats.gguf import arch as gguf_arch
from lmgen.formats.gguf import writer

GGUF_FAMILIES = sorted(name for name, family in FAMILIES.items() if family.gguf is not None)


def small_config_json(model_type: str) -> dict:
    """A config.json with every optional tensor the family can have (biases) switched on."""
    if model_type == "gpt2":
        return dict(model_type="gpt2", vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    return dict(model_type=model_type, vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                attention_bias=True, mlp_bias=True)


def test_every_derived_table_names_the_same_families():
    assert model_config.FAMILIES == tuple(FAMILIES)
    assert list(layout.FAMILY_NAMES) == list(FAMILIES)
    assert set(hf_config.ARCHITECTURES) == set(FAMILIES)
    assert ["gpt2", *hf_config.FAMILIES] == list(FAMILIES)  # GPT-2 alone has a config.json reader of its own
    assert {family.model_type for family in FAMILIES.values()} == set(FAMILIES)


def test_every_gguf_architecture_maps_back_to_its_family():
    assert len(gguf_arch.ARCHS) == len(GGUF_FAMILIES)  # no two families claim one architecture
    for name, arch in gguf_arch.ARCHS.items():
        assert arch.name == name
        assert FAMILIES[arch.model_type].gguf.name == name
    for family, name in writer.WRITABLE.items():
        assert FAMILIES[family].gguf.name == name


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_each_family_reads_its_config_json(model_type):
    cfg = hf_config.from_hf(small_config_json(model_type))
    assert cfg.family == model_type
    with pytest.raises(ConfigError, match=f"supported: {', '.join(FAMILIES)}\\)"):
        hf_config.from_hf({"model_type": "bert"})


@pytest.mark.parametrize("model_type", GGUF_FAMILIES)
def test_each_gguf_architecture_names_every_tensor_its_config_implies(model_type):
    # as the import writes it: attention biases where the file has them, never MLP biases
    cfg = hf_config.from_hf({**small_config_json(model_type), "mlp_bias": False})
    arch = gguf_arch.ARCHS[FAMILIES[model_type].gguf.name]
    canonical = layout.canonical_shapes(cfg)
    block = {name for name in canonical if name.startswith("blocks.0.")}
    targets, norms = set(), set()
    for name in gguf_arch.block_names(arch):
        mapped = layout.map_name(model_type, gguf_arch.hf_tensor_name(arch, f"blk.0.{name}"))
        assert isinstance(mapped, layout.Mapped), name
        targets |= set(mapped.targets)
        if name.removesuffix(".weight") in arch.norms:
            norms |= set(mapped.targets)
    assert block <= targets
    assert norms == {name for name in block if name.endswith("norm.weight") and ".attn." not in name}
    for name in ("token_embd.weight", "output_norm.weight", "output.weight"):
        assert isinstance(layout.map_name(model_type, gguf_arch.hf_tensor_name(arch, name)), layout.Mapped)


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_each_family_maps_every_tensor_transformers_makes(model_type):
    """transformers' own model of the family (on the meta device: names and shapes, no memory)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = small_config_json(model_type)
    config = transformers.AutoConfig.for_model(**hf, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == FAMILIES[model_type].hf_class
    cfg = hf_config.from_hf(hf)
    canonical = layout.canonical_shapes(cfg)
    targets = set()
    for name, tensor in model.state_dict().items():
        mapped = layout.map_name(model_type, name)
        assert mapped is not None, name
        if mapped is layout.IGNORED:
            continue
        assert set(mapped.targets) <= canonical.keys() | layout.tied_aliases(cfg).keys(), name
        if canonical.keys() >= set(mapped.targets):
            assert layout.stored_shape(mapped, canonical) == tuple(tensor.shape), name
        targets |= set(mapped.targets)
    assert canonical.keys() <= targets


def test_the_table_holds_plain_data():
    """families.py is the lowest layer's data: every entry is a frozen Family."""
    for family in FAMILIES.values():
        assert isinstance(family, families.Family)
        assert family.llama_like is not None or family.model_type == "gpt2"
