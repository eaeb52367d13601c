"""Loading checkpoint directories: name maps, shape checks, shards, tied weights, refusals."""

import json
import shutil

import pytest
import torch
from conftest import save_tiny
from safetensors.torch import load_file, save_file

from lmgen.config.model_config import to_toml
from lmgen.engine.load_checkpoint import load_model
from lmgen.errors import CheckpointError
from lmgen.formats.checkpoint import locate
from lmgen.formats.hf_config import from_hf


def copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def assert_same_logits(model, reference):
    ids = torch.arange(20)[None]
    with torch.no_grad():
        assert torch.equal(model(ids), reference(ids))


def test_tied_head_is_the_embedding_parameter(tmp_path):
    save_tiny("llama", tmp_path, tie_word_embeddings=True)
    model, cfg, _ = load_model(tmp_path)
    assert cfg.tied_embeddings
    assert model.head.linear.weight is model.embed.weight
    assert model.head.linear.weight.data_ptr() == model.embed.weight.data_ptr()
    n_params = sum(p.numel() for p in model.parameters())  # parameters() yields shared ones once
    assert n_params == sum(p.numel() for name, p in model.named_parameters() if name != "head.linear.weight")


def test_gpt2_head_is_tied_by_default(tmp_path):
    save_tiny("gpt2", tmp_path)
    model, _, _ = load_model(tmp_path)
    assert model.head.linear.weight is model.embed.weight


def test_sharded_checkpoint_loads(tiny_dir, tmp_path):
    import transformers

    reference = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir)
    reference.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    files = locate(tmp_path)
    assert len(files.weights) > 1
    assert_same_logits(load_model(tmp_path)[0], load_model(tiny_dir)[0])


def test_toml_config_directory_loads(tiny_dir, tmp_path):
    cfg = from_hf(json.loads((tiny_dir / "config.json").read_text()))
    (tmp_path / "config.toml").write_text(to_toml(cfg))
    shutil.copy(tiny_dir / "model.safetensors", tmp_path / "model.safetensors")
    assert_same_logits(load_model(tmp_path)[0], load_model(tiny_dir)[0])


def test_shape_mismatch_names_the_tensor(tiny_dir, tmp_path):
    path = copy_dir(tiny_dir, tmp_path / "bad")
    config = json.loads((path / "config.json").read_text())
    config["intermediate_size"] = 96
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight .*has shape "
                       r"\((128, 64|64, 128)\) but the config implies \((96, 64|64, 96)\)"):
        load_model(path)


def test_missing_tensor_is_reported(tiny_dir, tmp_path):
    path = copy_dir(tiny_dir, tmp_path / "bad")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing .*blocks\.1\.attn\.v\.weight"):
        load_model(path)


def test_unexpected_tensor_is_reported(tiny_dir, tmp_path):
    path = copy_dir(tiny_dir, tmp_path / "bad")
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected .*q_proj\.bias"):
        load_model(path)


def test_pickle_checkpoint_is_refused(tiny_dir, tmp_path):
    path = copy_dir(tiny_dir, tmp_path / "pickled")
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(path)


def test_truncated_safetensors_is_reported(tiny_dir, tmp_path):
    path = copy_dir(tiny_dir, tmp_path / "cut")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(path)


@pytest.mark.parametrize("what", ["missing", "file", "no-config", "no-weights"])
def test_bad_paths_are_reported(tiny_dir, tmp_path, what):
    if what == "missing":
        path = tmp_path / "nowhere"
    elif what == "file":
        path = tiny_dir / "config.json"
    else:
        path = copy_dir(tiny_dir, tmp_path / what)
        (path / ("config.json" if what == "no-config" else "model.safetensors")).unlink()
    with pytest.raises(CheckpointError):
        load_model(path)


def test_weights_are_mapped_from_the_file_not_copied(tiny_dir):
    """fp32 tensors stored as the model uses them sit in the file's map, at the file's offsets."""
    from lmgen.formats.checkpoint import read_header

    header, data_start = read_header(tiny_dir / "model.safetensors")
    model, _, _ = load_model(tiny_dir)
    params = {"model.embed_tokens.weight": model.embed.weight,
              "model.layers.1.self_attn.q_proj.weight": model.blocks[1].attn.q.weight,
              "model.layers.0.mlp.down_proj.weight": model.blocks[0].mlp.down.weight}
    base = model.embed.weight.data_ptr() - header["model.embed_tokens.weight"]["data_offsets"][0]
    stored = load_file(tiny_dir / "model.safetensors")
    for name, param in params.items():
        assert param.data_ptr() == base + header[name]["data_offsets"][0]
        assert torch.equal(param, stored[name])


def test_writing_to_a_mapped_weight_leaves_the_file_alone(tiny_dir):
    before = (tiny_dir / "model.safetensors").read_bytes()
    model, _, _ = load_model(tiny_dir)
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    assert (tiny_dir / "model.safetensors").read_bytes() == before


def test_converted_weights_match_the_file(tiny_dir):
    model, _, _ = load_model(tiny_dir, dtype=torch.bfloat16, vector_dtype=torch.float32)
    stored = load_file(tiny_dir / "model.safetensors")
    assert model.blocks[0].attn.k.weight.dtype == torch.bfloat16
    assert torch.equal(model.blocks[0].attn.k.weight, stored["model.layers.0.self_attn.k_proj.weight"].bfloat16())
    assert torch.equal(model.blocks[0].mlp_norm.weight, stored["model.layers.0.post_attention_layernorm.weight"])


def test_tensors_at_unaligned_offsets_load(tiny_dir, tmp_path):
    """safetensors does not promise aligned data: pad the header so that every tensor starts at 2 mod 8."""
    import struct

    path = copy_dir(tiny_dir, tmp_path / "shifted")
    data = (path / "model.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + size].rstrip(b" ")
    header += b" " * ((2 - len(header)) % 8)
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data[8 + size :])
    shifted, _, _ = load_model(path)
    assert shifted.blocks[0].attn.q.weight.data_ptr() % 4 != 0
    assert_same_logits(shifted, load_model(tiny_dir)[0])
