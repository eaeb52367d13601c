"""Models by name from a local stand-in for the Hugging Face Hub (tests/fake_hub.py): pull, reuse
from the cache with no request, offline, a split file joined, hash checks, clear failures."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from fake_hub import FakeHub, configure_hf
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from test_gguf_fuzz import tiny_gguf  # noqa: F401,F811 (a fixture)
from test_gguf_validate import tiny_q8_gguf  # noqa: F401,F811 (a fixture)

GGUF_REPO, CHECKPOINT_REPO, GATED_REPO = "lmgen-test/Tiny-GGUF", "lmgen-test/Tiny", "lmgen-test/Gated-GGUF"


def split_gguf(src: Path, out: Path, per_part: int) -> list[Path]:
    """src written again as llama.cpp's gguf-split writes it: parts of per_part tensors."""
    reader = GGUFReader(src)
    writer = GGUFWriter(out, reader.fields["general.architecture"].contents(), split_max_tensors=per_part)
    for field in reader.fields.values():
        if field.name != "general.architecture" and not field.name.startswith("GGUF."):
            kind = field.types[0]
            writer.add_key_value(field.name, field.contents(), kind,
                                 sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.n_bytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data)
    writer.close()
    return sorted(out.parent.glob(f"{out.stem}-*-of-*.gguf"))


@pytest.fixture(scope="module")
def hub(tiny_q8_gguf, tiny_gguf, tiny_dir, tmp_path_factory):
    parts = split_gguf(tiny_q8_gguf, tmp_path_factory.mktemp("split") / "Tiny-Q4_K_M.gguf", per_part=8)
    assert len(parts) >= 2
    with FakeHub() as server:
        server.add_repo(GGUF_REPO, {"README.md": b"# Tiny\n", "Tiny-Q8_0.gguf": tiny_q8_gguf, "Tiny-F32.gguf": tiny_gguf,
                                    **{p.name: p for p in parts}})
        server.add_repo(CHECKPOINT_REPO, {**{p.name: p for p in tiny_dir.iterdir() if p.is_file()},
                                          "pytorch_model.bin": b"not for lmgen", "onnx/model.onnx": b"nor this"})
        server.add_repo(GATED_REPO, {"Tiny-Q8_0.gguf": tiny_q8_gguf}, gated=True)
        yield server


@pytest.fixture
def hf(hub, monkeypatch, tmp_path):
    """huggingface_hub and lmgen pointed at the local Hub, with caches of this test's own."""
    configure_hf(monkeypatch, hub.url, tmp_path / "hf")
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    hub.start_of_test = len(hub.requests)  # the server is the module's: count this test's requests from here
    return hub


def pulled(result) -> dict:
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def transfers(hub, since: int) -> list:
    return [r for r in hub.requests[since:] if r.method == "GET" and "/resolve/" in r.path]


def test_pull_by_quant_then_run_it_by_name_with_no_second_transfer(hf, cli, tiny_q8_gguf):
    import hashlib

    record = pulled(cli("pull", f"{GGUF_REPO}:q8_0", "--json"))
    assert record["fetched"] and Path(record["path"]).read_bytes() == tiny_q8_gguf.read_bytes()
    assert record["sha256"] == hashlib.sha256(tiny_q8_gguf.read_bytes()).hexdigest()
    assert record["size"] == tiny_q8_gguf.stat().st_size and len(record["revision"]) == 40
    assert Path(record["path"]).is_relative_to(Path(os.environ["HF_HOME"]))  # the Hub's own cache
    before = len(hf.requests)
    start = time.perf_counter()
    again = pulled(cli("pull", f"{GGUF_REPO}:Q8_0", "--json"))
    assert time.perf_counter() - start < 0.5
    assert not again["fetched"] and again["path"] == record["path"]
    assert cli("generate", "-m", f"{GGUF_REPO}:Q8_0", "-n", "3", "hello").returncode == 0
    assert hf.requests[before:] == []  # not one request: the cache answered


def test_without_a_quant_the_split_q4_k_m_is_fetched_joined_and_said(hf, cli):
    result = cli("pull", GGUF_REPO)
    path = Path(result.stdout.decode().strip())
    assert result.returncode == 0 and path.suffix == ".gguf"
    assert "no quantization given, using Q4_K_M (Tiny-Q4_K_M-00001-of-" in result.stderr.decode()
    assert sum("Q4_K_M" in r.path for r in transfers(hf, hf.start_of_test)) >= 2  # each part
    generated = cli("generate", "-m", str(path), "-n", "3", "--json", "hello")
    by_q8 = cli("generate", "-m", f"{GGUF_REPO}:Q8_0", "-n", "3", "--json", "hello")
    assert json.loads(generated.stdout)["text"] == json.loads(by_q8.stdout)["text"]  # the same tensors, joined


def test_a_checkpoint_repo_fetches_only_what_lmgen_runs(hf, cli):
    record = pulled(cli("pull", CHECKPOINT_REPO, "--json"))
    folder = Path(record["path"])
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    fetched = {r.path.rsplit("/", 1)[-1] for r in transfers(hf, hf.start_of_test)}
    assert "pytorch_model.bin" not in fetched and "model.onnx" not in fetched
    assert cli("score", "-m", CHECKPOINT_REPO, "hello there").returncode == 0
    assert_one_line_error(cli("pull", f"{CHECKPOINT_REPO}:Q4_K_M"), 3, "has no GGUF files")  # cached, still refused


@pytest.mark.parametrize("name, code, pattern", [
    (f"{GGUF_REPO}:Q5_K_M", 3, r"has no Q5_K_M file; it has F32, Q4_K_M, Q8_0"),
    ("lmgen-test/Nope", 3, r"no repo lmgen-test/Nope on the Hub"),
    (f"hf://{GGUF_REPO}/Missing.gguf", 3, r"has no GGUF file Missing.gguf"),
    (f"hf://{GGUF_REPO}@v9", 3, r"has no revision v9"),
    (f"{CHECKPOINT_REPO}:Q4_K_M", 3, r"has no GGUF files"),
    (f"{GATED_REPO}:Q8_0", 3, r"is gated: accept its terms on the Hub, then set HF_TOKEN"),
])
def test_failures_are_one_line(hf, cli, name, code, pattern):
    assert_one_line_error(cli("pull", name), code, pattern)
    assert_one_line_error(cli("generate", "-m", name, "hi"), code, pattern)


def test_a_gated_repo_with_a_token(hf, cli, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    assert pulled(cli("pull", f"{GATED_REPO}:Q8_0", "--json"))["fetched"]


def test_offline_uses_the_cache_and_names_what_is_missing(hf, cli, monkeypatch, tmp_path):
    pulled(cli("pull", f"{GGUF_REPO}:Q8_0", "--json"))
    configure_hf(monkeypatch, hf.url, tmp_path / "hf", offline=True)
    before = len(hf.requests)
    assert cli("generate", "-m", f"{GGUF_REPO}:Q8_0", "-n", "2", "hi").returncode == 0
    assert_one_line_error(cli("pull", f"{GGUF_REPO}:F32"), 4, r"not in the Hugging Face cache .* HF_HUB_OFFLINE is set")
    assert hf.requests[before:] == []


def test_a_file_that_does_not_match_the_hubs_sha256_is_deleted_then_fetched_anew(hf, cli):
    record = pulled(cli("pull", f"{GGUF_REPO}:Q8_0", "--json"))
    blob = Path(record["path"]).resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # one bit of the last tensor
    blob.write_bytes(bytes(data))
    assert_one_line_error(cli("generate", "-m", f"{GGUF_REPO}:Q8_0", "hi"), 3, r"does not match the Hub's sha256.*deleted")
    assert not blob.exists() and not Path(record["path"]).exists()
    again = pulled(cli("pull", f"{GGUF_REPO}:Q8_0", "--json"))
    assert again["fetched"] and Path(again["path"]).resolve().read_bytes() != bytes(data)


def test_a_cut_transfer_is_resumed(hf, cli, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    hf.cut_after("Tiny-F32.gguf", 10_000)
    record = pulled(cli("pull", f"{GGUF_REPO}:F32", "--json"))
    assert any(r.range for r in transfers(hf, hf.start_of_test) if "Tiny-F32" in r.path)  # went on from where it was cut
    assert Path(record["path"]).stat().st_size == record["size"]


def test_list_shows_what_can_run_and_rm_removes_only_what_lmgen_fetched(hf, cli, tmp_path):
    pulled(cli("pull", f"{GGUF_REPO}:Q8_0", "--json"))
    from huggingface_hub import hf_hub_download

    hf_hub_download(GGUF_REPO, "Tiny-F32.gguf")  # another tool's download, in the same cache
    listed = {r["name"]: r for r in map(json.loads, cli("list", "--json").stdout.splitlines())}
    assert listed[f"{GGUF_REPO}:Q8_0"]["pulled_by_lmgen"] and listed[f"{GGUF_REPO}:Q8_0"]["family"] == "llama"
    assert not listed[f"{GGUF_REPO}:F32"]["pulled_by_lmgen"]
    assert_one_line_error(cli("rm", f"{GGUF_REPO}:F32"), 3, "was not fetched by lmgen")
    path = Path(listed[f"{GGUF_REPO}:Q8_0"]["path"])
    assert cli("rm", f"{GGUF_REPO}:Q8_0").returncode == 0
    assert not path.exists() and Path(listed[f"{GGUF_REPO}:F32"]["path"]).exists()
    assert f"{GGUF_REPO}:Q8_0" not in cli("list").stdout.decode()


def test_an_existing_path_that_reads_as_a_name_is_used_with_a_note(hf, cli, tiny_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_dir, tmp_path / "lmgen-test" / "Tiny")
    result = cli("generate", "-m", "lmgen-test/Tiny", "-n", "2", "hi")
    assert result.returncode == 0 and "is a local path here, used as one (hf://lmgen-test/Tiny" in result.stderr.decode()
    assert transfers(hf, hf.start_of_test) == []


def test_a_progress_bar_on_a_terminal_and_nothing_in_a_pipe(hub, lmgen_exe, tmp_path):
    from conftest import run_lmgen

    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1", "LMGEN_HOME": str(tmp_path / "home")}
    piped = run_lmgen(lmgen_exe, "pull", f"{GGUF_REPO}:F32", env={**os.environ, **env, "HF_HOME": str(tmp_path / "a")})
    assert piped.returncode == 0 and Path(piped.stdout.decode().strip()).is_file()
    assert piped.stderr.decode().splitlines() == [line for line in piped.stderr.decode().splitlines()
                                                  if line.startswith("lmgen: ")]  # lmgen's one line, no bar
    import pexpect

    child = pexpect.spawn(lmgen_exe, ["pull", f"{GGUF_REPO}:F32"], env={**os.environ, **env, "HF_HOME": str(tmp_path / "b")},
                          timeout=120, dimensions=(24, 120))
    child.expect(pexpect.EOF)
    shown = child.before.decode()
    assert re.search(r"Tiny-F32\.gguf: +100%\|.*\| [\d.]+k/[\d.]+k \[", shown), shown  # name, bytes, time
    assert shown.rstrip().splitlines()[-1].endswith("Tiny-F32.gguf")  # and the path, on stdout


def test_a_full_disk_mid_transfer_is_one_line_exit_4_and_leaves_no_partial_file(hf, cli, monkeypatch):
    import errno

    from huggingface_hub import file_download

    real = file_download.http_get

    def fills_the_disk(url, temp_file, **kwargs):
        temp_file.write(b"GGUF" + bytes(1000))  # some bytes land, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_download, "http_get", fills_the_disk)
    assert_one_line_error(cli("pull", f"{GGUF_REPO}:Q8_0"), 4, "No space left on device")
    cache = Path(os.environ["HF_HOME"]) / "hub"
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size and "blobs" in p.parts]
    monkeypatch.setattr(file_download, "http_get", real)  # space again: the next pull fetches it whole
    assert pulled(cli("pull", f"{GGUF_REPO}:Q8_0", "--json"))["fetched"]


def test_removing_a_file_forgets_it_in_its_own_repo_only(hf, cli, monkeypatch):
    """Two repos hold a file of the same name: rm of one leaves the other's in lmgen's ledger."""
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    pulled(cli("pull", f"{GGUF_REPO}:Q8_0", "--json"))
    pulled(cli("pull", f"{GATED_REPO}:Q8_0", "--json"))  # also Tiny-Q8_0.gguf
    assert cli("rm", f"{GGUF_REPO}:Q8_0").returncode == 0
    listed = {r["name"]: r for r in map(json.loads, cli("list", "--json").stdout.splitlines())}
    assert f"{GGUF_REPO}:Q8_0" not in listed and listed[f"{GATED_REPO}:Q8_0"]["pulled_by_lmgen"]
    assert cli("rm", f"{GATED_REPO}:Q8_0").returncode == 0
