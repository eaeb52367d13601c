"""Choosing the next token from the LM head's logits.

Each step is a pure function over a logits tensor of shape (batch, vocab).
``sample_next_token`` composes them in this order, the order transformers uses:

    temperature → top-k → top-p → softmax → multinomial draw

A temperature of 0 means greedy: the argmax of the logits, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lmgen.errors import InputError


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.0
    top_k: int = 0  # 0 keeps every token
    top_p: float = 1.0  # 1 keeps every token

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise InputError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top-k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k highest logits (ties at the k-th value are kept too); the rest become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability mass reaches p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[..., -1] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_next_token(logits: Tensor, settings: SamplingSettings, generator: torch.Generator | None = None) -> Tensor:
    """Next token ids, shape (batch,), from logits of shape (batch, vocab)."""
    if settings.greedy:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits.float(), settings.temperature)
    logits = top_k_filter(logits, settings.top_k)
    logits = top_p_filter(logits, settings.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
