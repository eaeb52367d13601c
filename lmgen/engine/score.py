"""Scoring text: every position of one forward pass predicts the next token.

For token t (t ≥ 1) the LM head's logits at position t-1 give log p(token t | tokens < t).
The first token has no prediction. Texts longer than the window are scored in
overlapping windows (the sliding-window method of transformers' perplexity guide):
each window starts ``stride`` tokens after the previous one, and only tokens not
scored before are scored, with the rest of the window as their context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmgen.errors import InputError

DEFAULT_WINDOW = 1024  # tokens per forward pass (capped by the context window)
MAX_TEXT_BYTES = 16 * 1024 * 1024  # a longer text is refused before it is read whole


@dataclass(frozen=True)
class TokenScore:
    id: int
    logprob: float | None  # natural log; None for the first token, which nothing predicts
    rank: int | None  # 1 = the model's most likely token


@dataclass(frozen=True)
class Score:
    tokens: list[TokenScore]
    window: int
    stride: int

    @property
    def scored(self) -> int:
        return sum(t.logprob is not None for t in self.tokens)

    @property
    def nll(self) -> float:
        """Total negative log-likelihood in nats."""
        return -sum(t.logprob for t in self.tokens if t.logprob is not None)

    @property
    def mean_nll(self) -> float:
        return self.nll / self.scored

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) for each forward pass over n tokens."""
    spans, scored_to, begin = [], 1, 0
    while scored_to < n:
        end = min(begin + window, n)
        spans.append((begin, end, scored_to))
        scored_to = end
        begin += stride
    return spans


def score(lm, text: str, window: int | None = None, stride: int | None = None) -> Score:
    from lmgen.engine.generation import require_sound

    ids = lm.encode(text)
    if len(ids) < 2:
        raise InputError(f"scoring needs at least two tokens; the text has {len(ids)}")
    window = min(DEFAULT_WINDOW if window is None else window, lm.config.max_context)
    stride = max(1, window // 2) if stride is None else stride
    if window < 2:
        raise InputError(f"window must be >= 2 tokens, got {window}")
    if not 1 <= stride <= window - 1:
        raise InputError(f"stride must be between 1 and window - 1 ({window - 1}), got {stride}")
    logprobs: list[float | None] = [None] * len(ids)
    ranks: list[int | None] = [None] * len(ids)
    device = lm.model.device
    with torch.inference_mode():
        for begin, end, first in windows(len(ids), window, stride):
            logits = lm.model(torch.tensor([ids[begin:end]], device=device))[0].float()
            require_sound(logits)
            predicting = logits[first - 1 - begin : end - 1 - begin]  # rows that predict first..end-1
            targets = torch.tensor(ids[first:end], device=device)
            target_logits = predicting.gather(-1, targets[:, None])
            lp = predicting.log_softmax(dim=-1).gather(-1, targets[:, None])[:, 0].tolist()
            rk = ((predicting > target_logits).sum(dim=-1) + 1).tolist()
            logprobs[first:end], ranks[first:end] = lp, rk
    return Score([TokenScore(i, lp, r) for i, lp, r in zip(ids, logprobs, ranks)], window, stride)
