"""The tokenizer of a GGUF file, rebuilt as a ``tokenizers.Tokenizer`` from ``tokenizer.ggml.*``.

Byte-level BPE only (llama.cpp's "gpt2" tokenizer model): the token list, the merges, the
pre-tokenizer llama.cpp names, control and user-defined tokens, and BOS when the file asks for
it. Every metadata value is read through ``gguf_import``'s typed checks, so a hostile file
ends in one CheckpointError.
"""

from __future__ import annotations

from lmgen.config import ModelConfig
from lmgen.errors import CheckpointError
from lmgen.gguf_import import _token_id, printable, token_list, typed

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def rebuild(meta: dict):
    """A ``tokenizers.Tokenizer`` rebuilt from byte-level BPE metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = typed(meta, "tokenizer.ggml.model", "a string")
    if kind != "gpt2":
        raise CheckpointError(f"GGUF tokenizer model {printable(repr(kind))} is not supported (only 'gpt2')")
    tokens, merges = token_list(meta), gguf_merges(meta)
    types = typed(meta, "tokenizer.ggml.token_type", "a list of integers", [])
    if types and len(types) != len(tokens):
        raise CheckpointError(f"GGUF metadata tokenizer.ggml.token_type has {len(types)} items, not {len(tokens)}")
    bos = _token_id(meta, "bos", len(tokens))
    pre = _pre_tokenizer(typed(meta, "tokenizer.ggml.pre", "a string", "default"), pre_tokenizers)
    add_bos = typed(meta, "tokenizer.ggml.add_bos_token", "true or false", False)
    try:  # tokenizers checks the rest (merges of unknown tokens, ...), with plain Exceptions
        tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        tokenizer.pre_tokenizer = pre
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        added = [(AddedToken(tokens[i], special=t == _CONTROL, normalized=False), t) for i, t in enumerate(types)]
        tokenizer.add_special_tokens([token for token, t in added if t == _CONTROL])
        tokenizer.add_tokens([token for token, t in added if t == _USER_DEFINED])
        if add_bos and bos is not None:
            tokenizer.post_processor = processors.TemplateProcessing(
                single=[tokens[bos], "$A"], pair=[tokens[bos], "$A", "$B"], special_tokens=[(tokens[bos], bos)]
            )
    except Exception as exc:
        raise CheckpointError(f"GGUF tokenizer metadata is inconsistent ({printable(exc)})") from None
    return tokenizer


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
