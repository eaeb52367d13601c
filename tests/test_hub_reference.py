"""Model references (lmgen.formats.hub.reference): paths and Hub names, read as the README says."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmgen.errors import InputError
from lmgen.formats.hub.reference import HubRef, parse, shadowed

part = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,20}[A-Za-z0-9])?", fullmatch=True).filter(
    lambda s: ".." not in s and "--" not in s and not s.lower().endswith((".gguf", ".safetensors", ".json", ".toml")))
quant = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)
revision = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(lambda s: ".." not in s)


@given(part, part, st.none() | quant)
def test_org_repo_quant_is_a_hub_name_and_round_trips(tmp_path_factory, org, repo, tag):
    text = f"{org}/{repo}" + (f":{tag}" if tag else "")
    ref = parse(text)
    assert ref == HubRef(f"{org}/{repo}", tag)
    assert parse(str(ref)) == ref


@given(part, part, st.none() | st.lists(part, min_size=1, max_size=3).map("/".join), st.none() | revision)
def test_hf_urls_round_trip(org, repo, file, rev):
    ref = parse(f"hf://{org}/{repo}" + (f"/{file}" if file else "") + (f"@{rev}" if rev else ""))
    assert ref == HubRef(f"{org}/{repo}", None, file, rev)
    assert parse(str(ref)) == ref


def test_an_existing_path_wins_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "repo").mkdir()
    assert parse("org/repo") is None and shadowed("org/repo")
    assert parse("hf://org/repo") == HubRef("org/repo")  # hf:// is always the Hub's
    assert not shadowed("other/repo") and parse("other/repo") == HubRef("other/repo")


@pytest.mark.parametrize("text", ["models/x.gguf", "a/b/c", "/abs/path", "x", "org/re..po", "./org/repo", "org/",
                                  "org/repo:", "org/repo.safetensors", "", "org--x/repo"])
def test_what_reads_as_a_path(text):
    assert parse(text) is None


@pytest.mark.parametrize("text", ["hf://", "hf://org", "hf://org/repo@", "hf://org/repo/../x", "hf://org/repo//x",
                                  "hf://org/repo@a..b", "hf://org/re po"])
def test_a_bad_hf_url_is_one_line_exit_2(text):
    with pytest.raises(InputError, match="hf://|revision|file"):
        parse(text)
