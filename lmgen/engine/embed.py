"""Embeddings: each input's final hidden states (the last norm's output, before the LM head)
pooled into one vector — every position's mean, the last position's (what a Qwen3 embedding
model was trained for) or the first's — and L2-normalised unless asked not to.

Each input runs alone: one forward pass over its own tokens, no padding, no cache, nothing of
its neighbours in the batch. So its vector has the same bits whether it came alone or among
others of any length (a batch only saves the per-request overhead). The pooling by default is
the model's own — a GGUF file's ``pooling_type``, carried as ``ModelConfig.pooling``, or a
sentence-transformers ``1_Pooling/config.json`` beside a checkpoint — else mean.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmgen.config.model_config import POOLINGS
from lmgen.errors import CheckpointError, InputError
from lmgen.text.tokenizer import check_token_ids
from lmgen.text.utf8 import utf8_text

# sentence-transformers' pooling modes (1_Pooling/config.json) → lmgen's pooling
SENTENCE_TRANSFORMERS = {"pooling_mode_lasttoken": "last", "pooling_mode_cls_token": "cls",
                         "pooling_mode_mean_tokens": "mean"}


@dataclass(frozen=True)
class Embeddings:
    """One vector per input, in input order, and the tokens each input took."""

    vectors: list[list[float]]
    tokens: list[int]
    pooling: str

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)


def embed(lm, inputs: Sequence[str | list[int]], pooling: str | None = None, normalize: bool = True) -> Embeddings:
    """Embed texts or lists of token ids with a loaded model (``lmgen.load``). ``pooling``: mean,
    last or cls (None: the model's own, else mean); ``normalize``: scale each vector to length 1.
    Every input is checked before any is computed: an empty one, a token id outside the
    vocabulary or more tokens than the context window is an InputError naming it."""
    pooling = pooling_for(lm, pooling)
    ids = token_ids(lm, inputs)
    return Embeddings(list(vectors(lm, ids, pooling, normalize)), [len(one) for one in ids], pooling)


def pooling_for(lm, pooling: str | None) -> str:
    """The pooling asked for (checked), else the model's own, else mean."""
    if pooling is None:
        return lm.config.pooling or sentence_transformers_pooling(lm.path) or "mean"
    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return pooling


def sentence_transformers_pooling(root) -> str | None:
    """The pooling a sentence-transformers checkpoint keeps in 1_Pooling/config.json (None: none)."""
    from lmgen.formats.files import read_json

    path = root / "1_Pooling" / "config.json"
    if not path.is_file():
        return None
    modes = read_json(path, "sentence-transformers pooling config")
    return next((pooling for key, pooling in SENTENCE_TRANSFORMERS.items() if modes.get(key) is True), None)


def token_ids(lm, inputs: Sequence[str | list[int]]) -> list[list[int]]:
    """Each input's token ids: text tokenized as prompts are, ids checked against the vocabulary."""
    if isinstance(inputs, str) or not isinstance(inputs, Sequence) or not inputs:
        raise InputError("there is nothing to embed: give one text or more")
    return [_ids(lm, item, f"input {index}" if len(inputs) > 1 else "the input") for index, item in enumerate(inputs)]


def _ids(lm, item, where: str) -> list[int]:
    context, vocab = lm.config.max_context, lm.config.vocab_size
    if isinstance(item, str):
        if not utf8_text(item, where):
            raise InputError(f"{where} is empty")
        if len(item) > context and len(item.encode("utf-8")) > context * lm.longest_token_bytes:
            raise InputError(f"{where} has more bytes than the context window's {context} tokens can hold; shorten it")
        ids = lm.encode_prompt(item)
    elif isinstance(item, list) and all(type(i) is int for i in item):
        ids = list(item)
        check_token_ids(ids, vocab, f"{where}: ")
    else:
        raise InputError(f"{where} must be text or a list of token ids")
    if not ids:
        raise InputError(f"{where} is empty")
    if len(ids) > context:
        raise InputError(f"{where} has {len(ids)} tokens but the context window holds {context}; shorten it")
    return ids


def vectors(lm, ids: list[list[int]], pooling: str, normalize: bool) -> Iterator[list[float]]:
    """Each input's vector (fp32 values), computed as it is asked for, each input alone."""
    model = lm.model
    for one in ids:
        with torch.inference_mode():  # (not across the yield: the caller's code keeps its own mode)
            hidden = model.hidden_states(torch.tensor([one], device=model.device))[0].float()
            vector = pooled(hidden, pooling, normalize).tolist()
        yield vector


def pooled(hidden: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """One vector of hidden states (seq, d_model), refused if it is not finite."""
    vector = hidden.mean(0) if pooling == "mean" else hidden[-1] if pooling == "last" else hidden[0]
    if not bool(torch.isfinite(vector).all()):
        raise CheckpointError("the model computed NaN or infinite hidden states: its weights are broken "
                              "(or overflow in this dtype)")
    return F.normalize(vector, dim=0) if normalize else vector
