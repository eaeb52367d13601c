"""Choosing the next token from the LM head's logits.

Each step is a small pure function over a logits tensor of shape (batch, vocab).
``sample_next_token`` composes them in this order (transformers' order, with
the OpenAI-style penalties after its repetition penalty):

    0. logit bias              OpenAI's logit_bias: logit + bias for the tokens it names
    1. repetition penalty      tokens seen in prompt or output: logit / p if > 0, else logit * p
    2. frequency / presence    generated tokens: logit - count * frequency - (count > 0) * presence
    --- temperature 0 stops here: greedy, the argmax ---
    3. temperature             logits / T
    4. top-k                   keep the k highest
    5. top-p (nucleus)         keep the smallest set with probability mass >= p
    6. min-p                   keep tokens with probability >= min_p * the top probability
    7. typical-p               keep the most "typical" tokens (closest to the entropy) up to mass p
    8. softmax, then one multinomial draw

Every filter keeps at least one token, and filtered tokens get -inf. The bias is added to every
token's logit (-inf stays -inf), so adding it to scores a constraint has already masked gives
what masking biased logits gives: a token the constraint rules out stays out, whatever its bias.
Each row is computed on its own, so a row's token never depends on its neighbours' settings.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from lmgen.engine.settings import BOUNDS, SamplingSettings  # noqa: F401 (also from here)
from lmgen.text.tokenizer import check_token_ids

NEG_INF = float("-inf")


class TokenHistory:
    """What the penalties look at: which tokens were seen (prompt + output) and output counts."""

    def __init__(self, prompt_ids: list[int], batch: int, vocab: int, device=None):
        self.seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
        self.seen[:, torch.tensor(prompt_ids, dtype=torch.long, device=device)] = True
        self.counts = torch.zeros(batch, vocab, dtype=torch.float32, device=device)

    def add(self, tokens: Tensor) -> None:
        """Record the tokens just chosen, shape (batch,)."""
        self.seen.scatter_(1, tokens[:, None], True)
        self.counts.scatter_add_(1, tokens[:, None], torch.ones_like(tokens[:, None], dtype=self.counts.dtype))


def logit_bias(logits: Tensor, pairs: tuple[tuple[int, float], ...]) -> Tensor:
    """Step 0: each (id, bias) pair's bias added to that token's logit in every row."""
    if not pairs:
        return logits
    ids, biases = _bias_tensors(pairs, logits.shape[-1], logits.device, logits.dtype)
    return logits.index_add(-1, ids, biases.expand(*logits.shape[:-1], -1))


@functools.lru_cache(maxsize=64)
def _bias_tensors(pairs: tuple[tuple[int, float], ...], vocab: int, device: torch.device, dtype: torch.dtype):
    """The ids and biases of a settings' logit_bias, made once (a request uses them every step)."""
    # (checked against the model before generating, check_logit_bias: here never an IndexError)
    check_token_ids((token for token, _ in pairs), vocab, "logit-bias ")
    ids = torch.tensor([token for token, _ in pairs], dtype=torch.long, device=device)
    return ids, torch.tensor([bias for _, bias in pairs], dtype=dtype, device=device)


def repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    if penalty == 1:
        return logits
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def frequency_presence_penalty(logits: Tensor, counts: Tensor, frequency: float, presence: float) -> Tensor:
    if frequency == 0 and presence == 0:
        return logits
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k highest logits (ties at the k-th value are kept too)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability mass reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[..., -1] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Keep tokens whose probability is at least min_p times the most likely token's."""
    if min_p <= 0:
        return logits
    probs = logits.softmax(dim=-1)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(remove, NEG_INF)


def typical_filter(logits: Tensor, mass: float) -> Tensor:
    """Locally typical sampling: keep tokens whose surprise is closest to the entropy, up to mass."""
    if mass >= 1.0:
        return logits
    log_probs = logits.log_softmax(dim=-1)
    probs = log_probs.exp()
    entropy = -(log_probs * probs).nansum(dim=-1, keepdim=True)
    distance = (-log_probs - entropy).abs()
    sorted_distance, order = torch.sort(distance, dim=-1)
    cumulative = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=-1).clamp(max=logits.shape[-1] - 1)
    remove_sorted = sorted_distance > sorted_distance.gather(-1, last[:, None])
    remove_sorted[..., 0] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def penalize(logits: Tensor, settings: SamplingSettings, history: TokenHistory | None) -> Tensor:
    """Steps 1-2: the penalties, which apply to greedy decoding too."""
    if history is None or not settings.uses_history:
        return logits
    logits = repetition_penalty(logits, history.seen, settings.repetition_penalty)
    return frequency_presence_penalty(logits, history.counts, settings.frequency_penalty, settings.presence_penalty)


def warp(logits: Tensor, settings: SamplingSettings) -> Tensor:
    """Steps 3-7: temperature and the filters, giving the logits that are sampled from."""
    logits = apply_temperature(logits, settings.temperature)
    logits = top_k_filter(logits, settings.top_k)
    logits = top_p_filter(logits, settings.top_p)
    logits = min_p_filter(logits, settings.min_p)
    return typical_filter(logits, settings.typical_p)


def sample_next_token(
    logits: Tensor,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    history: TokenHistory | None = None,
) -> Tensor:
    """Next token ids, shape (batch,), from logits of shape (batch, vocab)."""
    logits = penalize(logit_bias(logits.float(), settings.logit_bias), settings, history)
    if settings.greedy:
        return require_usable(logits).argmax(dim=-1)
    probs = require_usable(warp(logits, settings)).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def require_usable(scores: Tensor) -> Tensor:
    """Scores a token can be chosen from: each row's highest finite (a NaN anywhere makes the
    maximum NaN; -inf marks tokens ruled out, but never every one). Never text from broken numbers."""
    if not math.isfinite(float(scores.amax(dim=-1).sum(dtype=torch.float64))):
        from lmgen.errors import CheckpointError

        raise CheckpointError("the logits became NaN or infinite after the sampling options were applied; "
                              "no text was generated from them")
    return scores
