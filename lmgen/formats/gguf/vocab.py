"""A checkpoint's tokenizer as ``tokenizer.ggml.*`` metadata, written as llama.cpp's converter
writes it (``convert_hf_to_gguf.py``: ``get_vocab_base``, ``get_vocab_base_pre``, ``_set_vocab_gpt2``).

The inverse of ``tokenizer.rebuild``, for byte-level BPE tokenizers (GPT-2's kind: Llama 3, Qwen,
SmolLM): the token list padded to the model's vocabulary with ``[PAD{i}]`` tokens, each token's
type (added tokens that are special, or look special, are CONTROL), the pre-tokenizer's name
found as the converter finds it (a hash of the ids of a fixed text), and, through the ``gguf``
library's own ``SpecialVocab`` (the converter's code), the merges, special token ids, add-BOS/EOS
flags and chat template. SentencePiece tokenizers (``tokenizer.model``, byte fallback) are refused.
Every file is read through ``files`` first: a FIFO is refused unopened, sizes are bounded.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path

from lmgen.config.model_config import ModelConfig
from lmgen.errors import CheckpointError, InputError
from lmgen.formats.files import parse_json, read_bytes, read_text
from lmgen.formats.gguf.metadata import printable

MAX_TOKENIZER_BYTES = 256 << 20  # tokenizer.json of a 256k vocabulary: ~20 MB
# The files SpecialVocab opens by itself (with plain open): each checked to be a regular file first.
SPECIAL_VOCAB_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "chat_template.json",
                       "chat_template.jinja", "merges.txt")
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # lmgen (and transformers) prefer it to tokenizer_config's

# get_vocab_base_pre's text: the sha256 of the ids it encodes to names the pre-tokenizer.
CHECK_TEXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
              "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
              "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
              "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")
# A few of the converter's hashes: the tokenizers lmgen's families use.
KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5, Qwen2, Qwen2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3
}
GPT2_PRE = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}  # GPT-2's split, whatever vocabulary
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp's token types


def add_tokenizer(writer, root: Path, cfg: ModelConfig) -> None:
    """Add the tokenizer of checkpoint directory ``root`` to a ``GGUFWriter`` as ``tokenizer.ggml.*``."""
    from gguf import GGUFValueType, Keys

    text, spec = _tokenizer_json(root)
    tokenizer = _tokenizer(text, root)
    tokens, types = token_table(tokenizer, cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer, spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    config = _tokenizer_config(root)
    if isinstance(config.get("add_prefix_space"), bool):  # LlamaModel.set_vocab
        writer.add_add_space_prefix(config["add_prefix_space"])
    special = special_vocab(root, len(tokens), cfg)
    special.add_to_gguf(writer, quiet=True)
    if not special.merges:  # a vocabulary of bytes alone: llama.cpp still requires the key
        writer.add_key_value(Keys.Tokenizer.MERGES, [], GGUFValueType.ARRAY, GGUFValueType.STRING)


def _tokenizer_json(root: Path) -> tuple[str, dict]:
    """tokenizer.json's text and JSON, refused (exit 2) unless it is a byte-level BPE."""
    path = root / "tokenizer.json"
    if not os.path.lexists(path):
        raise CheckpointError(f"{root} has no tokenizer.json, which a GGUF file must carry")
    text = read_text(path, "tokenizer", MAX_TOKENIZER_BYTES)
    spec = parse_json(text, f"tokenizer {path}")
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("byte_fallback") \
            or os.path.lexists(root / "tokenizer.model"):
        kind = model.get("type") if isinstance(model, dict) else None
        kind = "SentencePiece BPE" if kind == "BPE" else printable(repr(kind))
        raise InputError(f"lmgen quantize writes byte-level BPE tokenizers (GPT-2's kind) only; {path} is {kind}")
    return text, spec


def _tokenizer(text: str, root: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises plain Exceptions
        raise CheckpointError(f"tokenizer {root / 'tokenizer.json'} cannot be loaded ({printable(exc)})") from None


def _tokenizer_config(root: Path) -> dict:
    path = root / "tokenizer_config.json"
    if not os.path.lexists(path):
        return {}
    config = parse_json(read_text(path, "tokenizer config"), f"tokenizer config {path}")
    return config if isinstance(config, dict) else {}


def token_table(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token and llama.cpp token type, as get_vocab_base makes them: ids without a
    token (a vocabulary padded for speed) become ``[PAD{i}]``, UNUSED."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if vocab and max(vocab.values()) >= vocab_size:
        raise CheckpointError(f"the tokenizer has token id {max(vocab.values())}, beyond the model's "
                              f"vocabulary of {vocab_size}")
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        token, kind = by_id.get(i), NORMAL
        if token is None:
            token, kind = f"[PAD{i}]", UNUSED
        elif i in added:
            token, kind = _added_token(tokenizer, added[i])
        tokens.append(token)
        types.append(kind)
    return tokens, types


def _added_token(tokenizer, added) -> tuple[str, int]:
    """An added token as llama.cpp expects it: pre-normalized (encoded and decoded back), CONTROL
    when special or looking special, else USER_DEFINED with SentencePiece's ▁ as spaces."""
    token = added.content
    if not added.normalized:
        token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False).ids, skip_special_tokens=False)
    if added.special or looks_special(token):
        return token, CONTROL
    return token.replace("\u2581", " "), USER_DEFINED


def looks_special(token: str) -> bool:
    """The converter's does_token_look_special: control tokens some models forgot to mark."""
    return token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>")) \
        or (token.startswith("<｜") and token.endswith("｜>")) or (token.startswith("<unused") and token.endswith(">"))


def pre_tokenizer_name(tokenizer, spec: dict) -> str:
    """llama.cpp's name for how the text is split before BPE: by the converter's hash of the ids
    of CHECK_TEXT; a tokenizer whose vocabulary the table does not know but whose split is plainly
    GPT-2's (one ByteLevel step with its regex) is "gpt-2". Anything else is refused: llama.cpp
    would split its text differently from the model's own tokenizer."""
    digest = sha256(str(tokenizer.encode(CHECK_TEXT).ids).encode()).hexdigest()
    if digest in KNOWN_PRE:
        return KNOWN_PRE[digest]
    pre = spec.get("pre_tokenizer")
    if isinstance(pre, dict) and all(pre.get(key) == value for key, value in GPT2_PRE.items()):
        return "gpt-2"
    raise InputError(f"the tokenizer's pre-tokenizer is not one lmgen quantize knows llama.cpp's name for "
                     f"(known: {', '.join(sorted(set(KNOWN_PRE.values())))}; hash {digest[:16]}…)")


def special_vocab(root: Path, n_tokens: int, cfg: ModelConfig):
    """The converter's own ``gguf.SpecialVocab`` (merges, special ids, add-BOS/EOS, chat template),
    its files checked first, its failures one CheckpointError; ids beyond the vocabulary are
    dropped (lmgen notes and ignores them too). The chat template is the one lmgen runs:
    ``chat_template.jinja`` first, as transformers reads it, else tokenizer_config.json's."""
    from gguf import SpecialVocab

    for name in SPECIAL_VOCAB_FILES:
        if os.path.lexists(root / name):
            read_bytes(root / name, MAX_TOKENIZER_BYTES, name)  # a regular file of sane size
    try:
        with quiet_gguf():
            special = SpecialVocab(root, load_merges=True, n_vocab=n_tokens)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"the tokenizer files in {root} are inconsistent ({printable(exc)})") from None
    if os.path.lexists(root / CHAT_TEMPLATE_FILE):
        special.chat_template = read_text(root / CHAT_TEMPLATE_FILE, "chat template")
    if "eos" not in special.special_token_ids and cfg.eos_token_ids and cfg.eos_token_ids[0] < n_tokens:
        special.special_token_ids["eos"] = cfg.eos_token_ids[0]  # lmgen's config.toml, no config.json
    if "bos" not in special.special_token_ids and cfg.bos_token_id is not None and cfg.bos_token_id < n_tokens:
        special.special_token_ids["bos"] = cfg.bos_token_id
    return special


@contextmanager
def quiet_gguf():
    """Silence the gguf library's log warnings: lmgen's stderr carries only its own lines."""
    logger = logging.getLogger("gguf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
