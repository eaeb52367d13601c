"""The tokenizer of a GGUF file, rebuilt as a ``tokenizers.Tokenizer`` from ``tokenizer.ggml.*``.

Two of llama.cpp's tokenizer models: byte-level BPE ("gpt2": the token list, the merges, the
pre-tokenizer llama.cpp names) and SentencePiece BPE ("llama": tokens with scores and byte
fallback, as Gemma and Phi-3-mini files carry; the file lists no merges, so they are rebuilt from
the vocabulary, as transformers does). Control and user-defined tokens are kept whole, and BOS
is added when the file asks for it. Every metadata value is read through ``gguf_import``'s
typed checks, so a hostile file ends in one CheckpointError.
"""

from __future__ import annotations

from lmgen.config.model_config import ModelConfig
from lmgen.errors import CheckpointError
from lmgen.formats.gguf.metadata import _token_id, printable, token_list, typed

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
SPACE = "\u2581"  # SentencePiece's visible space
MAX_MERGE_WORK = 200_000_000  # characters sliced to rebuild SentencePiece merges (real vocabularies: ~1e7)


def rebuild(meta: dict):
    """A ``tokenizers.Tokenizer`` rebuilt from the file's tokenizer metadata."""
    kind = typed(meta, "tokenizer.ggml.model", "a string")
    if kind not in ("gpt2", "llama"):
        raise CheckpointError(f"GGUF tokenizer model {printable(repr(kind))} is not supported ('gpt2', 'llama' are)")
    tokens = token_list(meta)
    types = typed(meta, "tokenizer.ggml.token_type", "a list of integers", [])
    if types and len(types) != len(tokens):
        raise CheckpointError(f"GGUF metadata tokenizer.ggml.token_type has {len(types)} items, not {len(tokens)}")
    bos, eos = (_added(meta, which, len(tokens)) for which in ("bos", "eos"))  # what encoding adds
    build = _byte_level if kind == "gpt2" else _sentencepiece
    try:  # tokenizers checks the rest (merges of unknown tokens, ...), with plain Exceptions
        tokenizer, tokens = build(meta, tokens)
        _add_special_tokens(tokenizer, tokens, types)
        if bos is not None or eos is not None:
            from tokenizers import processors

            first, last = [tokens[bos]] if bos is not None else [], [tokens[eos]] if eos is not None else []
            tokenizer.post_processor = processors.TemplateProcessing(
                single=[*first, "$A", *last], pair=[*first, "$A", "$B", *last],
                special_tokens=list({tokens[i]: i for i in (bos, eos) if i is not None}.items()))
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"GGUF tokenizer metadata is inconsistent ({printable(exc)})") from None
    return tokenizer


def _added(meta: dict, which: str, n_tokens: int) -> int | None:
    """The BOS (before) or EOS (after: an embedding model's last token) that encoding adds, if any."""
    token_id = _token_id(meta, which, n_tokens)
    return token_id if typed(meta, f"tokenizer.ggml.add_{which}_token", "true or false", False) else None


def _byte_level(meta: dict, tokens: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pre = _pre_tokenizer(typed(meta, "tokenizer.ggml.pre", "a string", "default"), pre_tokenizers)
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=gguf_merges(meta)))
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer, tokens


def _sentencepiece(meta: dict, tokens: list[str]):
    """SentencePiece BPE with byte fallback, as transformers rebuilds it from a GGUF file: Gemma
    keeps spaces as they are (runs of spaces are tokens, respelled with ▁) and ranks merges by
    position in the file; the others add a leading ▁ and rank merges by score."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    gemma = typed(meta, "general.architecture", "a string").startswith("gemma")
    if gemma:  # runs of spaces are stored as spaces, looked up as ▁
        tokens = [SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
        ranks = {t: -i for i, t in enumerate(tokens)}
    else:
        scores = typed(meta, "tokenizer.ggml.scores", "a list of numbers")
        if len(scores) != len(tokens):
            raise CheckpointError(f"GGUF metadata tokenizer.ggml.scores has {len(scores)} items, not {len(tokens)}")
        ranks = dict(zip(tokens, scores))
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = _token_id(meta, "unknown", len(tokens))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=sentencepiece_merges(vocab, ranks), fuse_unk=True,
                                     byte_fallback=True, unk_token=tokens[unk] if unk is not None else None))
    pieces = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    arch = typed(meta, "general.architecture", "a string")
    if gemma:  # no leading ▁
        tokenizer.normalizer = normalizers.Replace(" ", SPACE)
        tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    elif arch == "phi3":  # a leading ▁ before the whole text, special tokens included
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    else:  # Llama: a leading ▁ before the first piece of text
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=False)
    if not gemma:
        pieces.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(pieces)
    return tokenizer, tokens


def sentencepiece_merges(vocab: dict[str, int], ranks: dict[str, float]) -> list[tuple[str, str]]:
    """The merges a SentencePiece vocabulary implies: every split of a token into two tokens,
    best-ranked token first (transformers' generate_merges)."""
    if sum(len(t) ** 2 for t in ranks) > MAX_MERGE_WORK:
        raise CheckpointError("GGUF tokenizer vocabulary is too large to rebuild its merges")
    merges = []
    for token, rank in ranks.items():
        local = [(token[:i], token[i:], rank) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _add_special_tokens(tokenizer, tokens: list[str], types: list[int]) -> None:
    from tokenizers import AddedToken

    added = [(AddedToken(tokens[i], special=t == _CONTROL, normalized=False), t) for i, t in enumerate(types)]
    tokenizer.add_special_tokens([token for token, t in added if t == _CONTROL])
    tokenizer.add_tokens([token for token, t in added if t == _USER_DEFINED])


def gguf_merges(meta: dict) -> list[tuple[str, str]]:
    merges = []
    for merge in typed(meta, "tokenizer.ggml.merges", "a list of strings"):
        pair = tuple(merge.split(" "))
        if len(pair) != 2 or not all(pair):
            raise CheckpointError(f"GGUF metadata tokenizer.ggml.merges holds {printable(repr(merge))}, not 'a b'")
        merges.append(pair)
    return merges


def _pre_tokenizer(pre: str, pre_tokenizers):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # llama.cpp's "smollm": every digit on its own, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("gpt2", "gpt-2", "default"):
        return byte_level
    raise CheckpointError(f"GGUF pre-tokenizer {printable(repr(pre))} is not supported (smollm, gpt2, default are)")


def tokenizer_config(meta: dict, cfg: ModelConfig) -> dict:
    tokens = token_list(meta)

    def token(key: str):
        index = _token_id(meta, key, len(tokens))
        return tokens[index] if index is not None else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": typed(meta, "tokenizer.ggml.add_bos_token", "true or false", False),
        "model_max_length": cfg.max_context,
    }
    template = typed(meta, "tokenizer.chat_template", "a string", None)
    if template is not None:
        config["chat_template"] = template
    return config
