"""SentencePiece tokenizers of GGUF files (Gemma, Phi-3-mini, Llama 2 style), rebuilt, against
transformers' own rebuild of the same file: same ids, same text back."""

import pytest
from gguf import GGUFWriter

from lmgen.errors import CheckpointError
from lmgen.formats.gguf.metadata import open_gguf, read_metadata
from lmgen.formats.gguf.tokenizer import rebuild

SPACE = "\u2581"
WORDS = [SPACE, "t", "h", "e", "a", "c", "s", "o", "n", "r", "i", "l", SPACE + "t", "he", SPACE + "the", "at",
         SPACE + "c", SPACE + "cat", SPACE + "s", SPACE + "sat", "on", SPACE + "on", "in", "er", SPACE + "a", "  ",
         "   ", "\n", "é", "日"]
TEXTS = ["The cat sat on the mat", " the cat", "the  cat   sat\non", "héllo 日本 🐱",
         "<start_of_turn>user\nhi<end_of_turn>", "a", "  lead", ""]


def write_spm_gguf(path, arch: str, scores=None, tokens=None) -> str:
    """A metadata-only GGUF with a small SentencePiece vocabulary: specials, 256 byte tokens, words."""
    base = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tokens = tokens or base + [f"<0x{b:02X}>" for b in range(256)] + WORDS
    types = [3, 3, 3, 2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 262)
    writer = GGUFWriter(str(path), arch=arch)
    writer.add_block_count(1)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores if scores is not None else [0.0] * 262 + [-float(i) for i in range(len(tokens) - 262)])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.mark.parametrize("arch", ["gemma3", "gemma2", "phi3", "llama"])
def test_sentencepiece_rebuild_matches_transformers(arch, tmp_path):
    from transformers import AutoTokenizer

    path = write_spm_gguf(tmp_path / f"{arch}.gguf", arch)
    reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file=f"{arch}.gguf")
    ours = rebuild(read_metadata(open_gguf(path)))
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == reference(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids, skip_special_tokens=False)
    assert ours.encode("🐱").ids[-4:] == [6 + b for b in "🐱".encode()]  # byte fallback: <0xF0> <0x9F> ...


def test_scores_of_the_wrong_length_are_refused(tmp_path):
    path = write_spm_gguf(tmp_path / "bad.gguf", "llama", scores=[0.0] * 5)
    with pytest.raises(CheckpointError, match="tokenizer.ggml.scores has 5 items"):
        rebuild(read_metadata(open_gguf(path)))


def test_a_vocabulary_too_costly_to_merge_is_refused_quickly(tmp_path, monkeypatch):
    import lmgen.formats.gguf.tokenizer as gt

    monkeypatch.setattr(gt, "MAX_MERGE_WORK", 1000)
    path = write_spm_gguf(tmp_path / "big.gguf", "gemma3")
    with pytest.raises(CheckpointError, match="too large to rebuild its merges"):
        rebuild(read_metadata(open_gguf(path)))
