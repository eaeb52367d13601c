"""inspect: counts from headers alone, matching published figures and the tensors themselves."""

import json
import re
from pathlib import Path

import pytest
from conftest import run_lmgen, save_tiny

from lmgen.formats.inspect import PARTS, report

CONFIGS = Path(__file__).parent.parent / "configs"


def test_gpt2_small_config_is_124m():
    info = report(CONFIGS / "gpt2-small.toml")
    assert info["parameters"]["total"] == 124_439_808  # GPT-2 small, tied head counted once
    assert info["lm_head"]["shape"] == [768, 50257]
    assert info["parameters"]["position_embedding"] == 1024 * 768


def test_smollm2_config_and_checkpoint_are_135m(smollm2_dir):
    from_config = report(CONFIGS / "smollm2-135m.toml")
    from_headers = report(smollm2_dir)
    assert from_config["parameters"] == from_headers["parameters"]
    assert from_headers["parameters"]["total"] == 134_515_008  # SmolLM2-135M's published count
    assert from_headers["lm_head"]["share_of_model"] == pytest.approx(576 * 49152 / 134_515_008)


def test_counts_equal_the_sum_of_tensor_sizes_and_the_loaded_model(tmp_path):
    import torch

    from lmgen.engine.load_checkpoint import load_model

    for family in ("gpt2", "llama", "qwen2", "mistral"):
        path = tmp_path / family
        save_tiny(family, path)
        info = report(path, "*")
        counted = [t for t in info["tensors"] if t["part"] is not None]
        assert info["parameters"]["total"] == sum(torch.Size(t["shape"]).numel() for t in counted)
        assert sum(info["parameters"][p] for p in PARTS) == info["parameters"]["total"]
        model, _, _ = load_model(path)
        assert info["parameters"]["total"] == sum(p.numel() for p in model.parameters()), family
        assert info["memory_bytes"]["stored"] == sum(t["bytes"] for t in counted)


def test_tied_and_untied_heads(tmp_path):
    save_tiny("llama", tmp_path / "untied")
    save_tiny("llama", tmp_path / "tied", tie_word_embeddings=True)
    untied, tied = report(tmp_path / "untied"), report(tmp_path / "tied")
    assert untied["parameters"]["head"] == 64 * 300 and not untied["lm_head"]["tied_in_config"]
    assert untied["lm_head"]["separate_tensor_stored"]
    assert tied["parameters"]["head"] == 0 and tied["lm_head"]["tied_in_config"]
    assert tied["parameters"]["total"] == untied["parameters"]["total"] - 64 * 300


def test_gguf_file(smollm2_dir):
    from lmgen.formats.paths import bundled_gguf

    info = report(bundled_gguf(), "blk.0.*")
    assert info["parameters"] == report(smollm2_dir)["parameters"]
    assert set(info["memory_bytes"]["stored_dtypes"]) == {"F32", "Q4_1", "Q8_0"}
    assert info["memory_bytes"]["stored"] < info["memory_bytes"]["fp32"] / 4
    assert {t["name"] for t in info["tensors"]} >= {"blk.0.attn_q.weight", "blk.0.ffn_down.weight"}


def test_single_safetensors_file_uses_its_directory_config(smollm2_dir):
    assert report(smollm2_dir / "model.safetensors")["parameters"] == report(smollm2_dir)["parameters"]


def test_memory_and_kv_cache_figures(smollm2_dir):
    info = report(smollm2_dir)
    assert info["memory_bytes"]["fp32"] == 4 * 134_515_008
    assert info["memory_bytes"]["bf16"] == 2 * 134_515_008
    assert info["kv_cache_bytes_per_token"]["fp32"] == 2 * 30 * 3 * 64 * 4


def test_cli_tensors_glob_and_json(lmgen_exe, smollm2_dir):
    result = run_lmgen(lmgen_exe, "inspect", "--json", "--match", "*layers.3.*proj*", str(smollm2_dir))
    info = json.loads(result.stdout)
    assert len(info["tensors"]) == 7 and all(".layers.3." in t["name"] for t in info["tensors"])
    text = run_lmgen(lmgen_exe, "inspect", "--tensors", str(smollm2_dir)).stdout.decode()
    assert "model.layers.29.mlp.down_proj.weight" in text and "576 × 1536" in text


def test_cli_plain_report_in_a_pipe(lmgen_exe, smollm2_dir):
    result = run_lmgen(lmgen_exe, "inspect", str(smollm2_dir))
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "\x1b[" not in out and "┃" not in out
    assert "weight 576 × 49152 (d_model × vocab)" in out and "tied to the token embedding" in out
    assert "9 query, 3 key/value, head dim 64" in out
    assert "134,515,008" in out and "tied weights counted once" in out


def test_cli_bad_path(lmgen_exe, tmp_path):
    result = run_lmgen(lmgen_exe, "inspect", str(tmp_path / "nope"))
    assert result.returncode == 3 and b"does not exist" in result.stderr and b"Traceback" not in result.stderr


def test_a_gguf_file_is_read_from_lmgens_index_after_the_first_time(monkeypatch, tmp_path):
    """The header of a large vocabulary takes ~2 s to parse: inspect reads it once, as generate does."""
    import shutil

    from lmgen.formats.gguf import metadata
    from lmgen.formats.paths import bundled_gguf

    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    gguf = shutil.copy(bundled_gguf(), tmp_path / "model.gguf")
    first = report(gguf, "*")

    def parse(*args):
        raise AssertionError("the header was parsed again")

    monkeypatch.setattr(metadata, "open_gguf", parse)
    assert report(gguf, "*") == first
    assert report(tmp_path, "*")["tensors"] == first["tensors"]  # a directory holding one GGUF file


def test_inspect_without_a_path_inspects_the_default_model(cli):
    from lmgen.formats.paths import resolve_model

    result = cli("inspect", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["path"] == str(resolve_model(None))


def test_gguf_formats_and_bits_per_weight():
    """The default model: Q4_1 matrices (20 bytes a block of 32), its embedding at Q8_0 (34), norms F32."""
    from lmgen.formats.paths import bundled_gguf

    info = report(bundled_gguf())
    formats = info["formats"]
    assert {name: f["tensors"] for name, f in formats.items()} == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert [formats[name]["bits_per_weight"] for name in ("F32", "Q4_1", "Q8_0")] == [32.0, 5.0, 8.5]
    assert sum(f["parameters"] for f in formats.values()) == info["parameters"]["total"]
    assert sum(f["bytes"] for f in formats.values()) == info["memory_bytes"]["stored"]
    assert info["bits_per_weight"] == 8 * info["memory_bytes"]["stored"] / info["parameters"]["total"]
    assert 5.7 < info["bits_per_weight"] < 5.8
    assert "bytes_read_per_token" not in info  # only with stats


def test_bytes_read_per_token_are_what_a_decode_step_reads(monkeypatch, tmp_path):
    """Tied (the default model): every tensor, the embedding whole, as its head reads it; untied:
    all but the embedding, of which a token reads one row — as the loaded models count them."""
    import lmgen
    from lmgen.engine.load_checkpoint import load_model
    from lmgen.formats.paths import bundled_gguf

    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    tied = report(bundled_gguf(), stats=True)
    read = tied["bytes_read_per_token"]
    assert read["embedding_read_whole"] and read["total"] == tied["memory_bytes"]["stored"]
    assert read["total"] == lmgen.load(bundled_gguf()).model.weight_bytes_per_token()
    save_tiny("llama", tmp_path / "untied")
    untied = report(tmp_path / "untied", stats=True)
    embedding = 4 * 300 * 64
    assert untied["bytes_read_per_token"]["total"] == untied["memory_bytes"]["stored"] - embedding
    assert untied["bytes_read_per_token"]["total"] == load_model(tmp_path / "untied")[0].weight_bytes_per_token()


def test_cli_shows_formats_and_with_stats_the_bytes_read_per_token(cli):
    from lmgen.formats.paths import bundled_gguf

    plain = cli("inspect", str(bundled_gguf())).stdout.decode()
    assert "bits/weight" in plain and "weights read per token" not in plain
    assert any(line.split()[:2] == ["Q4_1", "210"] and line.split()[-1] == "5.00" for line in plain.splitlines())
    stats = cli("inspect", "--stats", str(bundled_gguf())).stdout.decode()
    assert "weights read per token        96.6 MB" in stats and "tied: the head reads the embedding whole" in stats
    info = json.loads(cli("inspect", "--json", "-v", str(bundled_gguf())).stdout)
    assert info["bytes_read_per_token"]["formats"].keys() == {"F32", "Q4_1", "Q8_0"}
    listed = cli("inspect", "--tensors", "--match", "blk.0.ffn_up*", str(bundled_gguf())).stdout.decode()
    assert "format" in listed and "blk.0.ffn_up.weight" in listed and "Q4_1" in listed


def weight_bytes(model) -> int:
    """The bytes of a loaded model's weights, each tensor once (a tied head shares the embedding's)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("dtype", ["q8", "q4"])
def test_quantized_memory_is_what_the_loaded_model_holds(tmp_path, dtype):
    """inspect's "weights at q8/q4" equals the bytes --dtype q8/q4 loads (and so reads per token):
    projections in blocks, embedding and head at Q8_0, norms, biases and positions at fp32."""
    import lmgen
    from lmgen.formats.paths import bundled_gguf

    cases = {"smollm2 gguf": bundled_gguf()}
    for family, overrides in (("gpt2", {}), ("llama", {}), ("llama", {"tie_word_embeddings": True}), ("qwen2", {})):
        path = tmp_path / f"{family}-{len(overrides)}"
        save_tiny(family, path, **overrides)
        cases[path.name] = path
    for name, path in cases.items():
        assert report(path)["memory_bytes"][dtype] == weight_bytes(lmgen.load(path, dtype=dtype).model), name


def test_a_match_with_no_tensor_says_so_and_exits_0(cli):
    from lmgen.formats.paths import bundled_gguf

    result = cli("inspect", "--tensors", "--match", "*layers.0.*", str(bundled_gguf()))
    assert result.returncode == 0
    assert "no tensor name matches '*layers.0.*' (names here look like token_embd.weight)" in result.stdout.decode()
    as_json = json.loads(cli("inspect", "--json", "--match", "nothing*", str(bundled_gguf())).stdout)
    assert as_json["tensors"] == [] and as_json["tensor_match"]["glob"] == "nothing*"


def test_the_docs_match_example_matches_the_default_models_names():
    from lmgen.formats.paths import bundled_gguf

    guide = (Path(__file__).parent.parent / "docs" / "guide" / "inspect.md").read_text()
    example = re.search(r"`--match '([^']+)'` for the default", guide).group(1)
    names = [t["name"] for t in report(bundled_gguf(), example)["tensors"]]
    assert names and all(n.startswith("blk.0.") for n in names)
