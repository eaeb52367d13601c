"""huggingface_hub 2.4.0 against the fake Hub of ``fake_hub.py``: downloads, metadata, errors, resume, offline."""

from __future__ import annotations

import hashlib
import os
import types
from pathlib import Path

import httpx2
import pytest
from fake_hub import FakeHub, configure_hf
from huggingface_hub import HfApi, constants, file_download, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                    RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

CONFIG = b'{"model_type": "llama"}'
VOCAB = b"a\nb\nc\n"
WEIGHTS = bytes(range(256)) * 1200  # 300 KiB
TENSORS = os.urandom(50_000)
REPO = "org/tiny"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.safetensors").write_bytes(TENSORS)
    with FakeHub() as hub:
        hub.add_repo(REPO, {"config.json": CONFIG, "model.gguf": WEIGHTS, "tokenizer/vocab.txt": VOCAB,
                            "model.safetensors": tmp_path / "src" / "model.safetensors"})
        hub.add_repo("org/gated", {"config.json": CONFIG}, gated=True)
        configure_hf(monkeypatch, hub.url, tmp_path / "hf")
        yield hub


@pytest.fixture
def no_retry_sleep(monkeypatch):
    """http_get sleeps 1 s before resuming a cut download; time.sleep is all file_download uses of time."""
    monkeypatch.setattr(file_download, "time", types.SimpleNamespace(sleep=lambda seconds: None))


def test_configuration_stays_in_tmp(hub, tmp_path):
    assert constants.ENDPOINT == hub.url
    assert constants.HF_HUB_CACHE == str(tmp_path / "hf" / "hub")
    assert constants.HF_TOKEN_PATH.startswith(str(tmp_path)) and not constants.HF_HUB_OFFLINE


def test_download_lfs_and_small_files(hub, tmp_path):
    for name, data in [("model.gguf", WEIGHTS), ("config.json", CONFIG), ("tokenizer/vocab.txt", VOCAB),
                       ("model.safetensors", TENSORS)]:
        path = Path(hf_hub_download(REPO, name))
        assert path.read_bytes() == data and path.is_relative_to(tmp_path / "hf" / "hub")
    blobs = {p.name for p in (tmp_path / "hf" / "hub" / "models--org--tiny" / "blobs").iterdir()}
    assert blobs == {hashlib.sha256(WEIGHTS).hexdigest(), hashlib.sha256(TENSORS).hexdigest(), git_sha1(CONFIG),
                     git_sha1(VOCAB)}
    assert [r.method for r in hub.calls(path_contains="/model.gguf")] == ["HEAD", "GET"]


def test_metadata_headers_and_no_xet(hub):
    meta = get_hf_file_metadata(hf_hub_url(REPO, "model.gguf"))
    assert (meta.etag, meta.size, meta.commit_hash) == (hashlib.sha256(WEIGHTS).hexdigest(), len(WEIGHTS),
                                                        hub.repos[REPO].sha)
    assert meta.xet_file_data is None and len(meta.commit_hash) == 40
    small = get_hf_file_metadata(hf_hub_url(REPO, "config.json"))
    assert (small.etag, small.size) == (git_sha1(CONFIG), len(CONFIG))


def test_second_download_makes_no_transfer(hub):
    path = hf_hub_download(REPO, "model.gguf")
    hub.requests.clear()
    assert hf_hub_download(REPO, "model.gguf", local_files_only=True) == path
    assert hub.requests == []
    assert hf_hub_download(REPO, "model.gguf") == path  # online: a HEAD, no GET
    assert [r.method for r in hub.requests] == ["HEAD"]


def test_model_info_with_files_metadata(hub):
    info = HfApi().model_info(REPO, files_metadata=True)
    assert info.id == REPO and info.sha == hub.repos[REPO].sha and info.gated is False
    siblings = {s.rfilename: s for s in info.siblings}
    assert {name: s.size for name, s in siblings.items()} == {
        "config.json": len(CONFIG), "model.gguf": len(WEIGHTS), "tokenizer/vocab.txt": len(VOCAB),
        "model.safetensors": len(TENSORS)}
    assert siblings["model.gguf"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert siblings["model.gguf"].lfs.size == len(WEIGHTS)
    assert siblings["config.json"].lfs is None and siblings["config.json"].blob_id == git_sha1(CONFIG)
    assert all(s.size is None for s in HfApi().model_info(REPO).siblings)
    assert HfApi().repo_info(REPO, revision=info.sha).sha == info.sha


@pytest.mark.parametrize("page_size", [None, 2])
def test_list_repo_files_and_tree(hub, page_size):
    hub.page_size = page_size
    api = HfApi()
    assert sorted(api.list_repo_files(REPO)) == ["config.json", "model.gguf", "model.safetensors",
                                                  "tokenizer/vocab.txt"]
    top = {e.path: e for e in api.list_repo_tree(REPO)}
    assert sorted(top) == ["config.json", "model.gguf", "model.safetensors", "tokenizer"]
    assert type(top["tokenizer"]).__name__ == "RepoFolder" and top["model.gguf"].lfs.sha256 == \
        hashlib.sha256(WEIGHTS).hexdigest()
    assert [e.path for e in api.list_repo_tree(REPO, "tokenizer", recursive=True)] == ["tokenizer/vocab.txt"]
    if page_size:
        assert any("cursor=" in r.query for r in hub.calls("GET", "/tree/"))
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, "nowhere"))


def test_snapshot_download_allow_patterns(hub):
    folder = Path(snapshot_download(REPO, allow_patterns=["*.json", "tokenizer/*"]))
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["config.json", "tokenizer/vocab.txt"]
    assert (folder / "config.json").read_bytes() == CONFIG
    fetched = {r.path.rsplit("/resolve/", 1)[1].split("/", 1)[1] for r in hub.calls("GET", "/resolve/")}
    assert fetched == {"config.json", "tokenizer/vocab.txt"}


def test_cut_download_resumes_with_range_in_the_same_call(hub, monkeypatch, no_retry_sleep):
    # Bytes are written (and so resumed from) in whole DOWNLOAD_CHUNK_SIZE chunks: 10 MiB by default.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    hub.cut_after("model.gguf", 10_000)
    assert Path(hf_hub_download(REPO, "model.gguf")).read_bytes() == WEIGHTS
    assert [r.range for r in hub.calls("GET", "/model.gguf")] == [None, "bytes=8192-"]


def test_cut_download_that_keeps_failing(hub, no_retry_sleep, tmp_path):
    hub.cut_after("model.gguf", 0, times=6)  # the first try and 5 retries
    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(REPO, "model.gguf")
    assert len(hub.calls("GET", "/model.gguf")) == 6
    assert not list((tmp_path / "hf").rglob("*.incomplete"))  # the partial file is not kept...
    hub.requests.clear()
    assert Path(hf_hub_download(REPO, "model.gguf")).read_bytes() == WEIGHTS
    assert [r.range for r in hub.calls("GET")] == [None]  # ...so the next call starts over


def test_range_requests(hub):
    url = hf_hub_url(REPO, "model.gguf", endpoint=hub.url)
    r = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert (r.status_code, r.content) == (206, WEIGHTS[10:20])
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(WEIGHTS)}"
    r = httpx2.get(url, headers={"Range": "bytes=-5"})
    assert (r.status_code, r.content) == (206, WEIGHTS[-5:])
    assert httpx2.get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"}).status_code == 416


def test_gated_repo(hub, monkeypatch):
    with pytest.raises(GatedRepoError) as error:
        hf_hub_download("org/gated", "config.json")
    assert error.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as error:
        hf_hub_download("org/gated", "config.json", token="hf_someone_else")
    assert error.value.response.status_code == 403
    assert HfApi().model_info("org/gated").gated == "manual"  # metadata stays public, as on the Hub
    assert Path(hf_hub_download("org/gated", "config.json", token="hf_fake_token")).read_bytes() == CONFIG
    assert hub.calls("GET", "/org/gated/resolve/")[-1].authorization == "Bearer hf_fake_token"
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")  # read at call time, unlike HF_ENDPOINT
    assert Path(hf_hub_download("org/gated", "config.json", force_download=True)).read_bytes() == CONFIG


def test_unknown_repo_file_and_revision(hub):
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nothing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("org/nothing")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="v9")
    with pytest.raises(RevisionNotFoundError):
        HfApi().model_info(REPO, revision="v9")


def test_offline(hub, monkeypatch, tmp_path):
    path = hf_hub_download(REPO, "config.json")
    configure_hf(monkeypatch, hub.url, tmp_path / "hf", offline=True)
    hub.requests.clear()
    assert constants.is_offline_mode()
    assert hf_hub_download(REPO, "config.json") == path
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "model.gguf")
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download("org/gated")  # nothing cached
    # hf_hub_download writes no tree listing, so offline snapshot_download can't tell the folder is partial
    assert os.listdir(snapshot_download(REPO)) == ["config.json"]
    assert hub.requests == []
