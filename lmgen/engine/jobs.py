"""What the engine holds: a ``Job`` (what it is asked for), a ``Row`` per sample in flight, a
``Prefill`` per prompt being prefilled (again, for a row resumed after preemption), and each
sample's seed (``prompt_seed``)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from lmgen.engine.generation import GenerationSettings, SampleText
from lmgen.engine.lookup import PromptLookup
from lmgen.engine.sampling import TokenHistory


GOLDEN = 0x9E3779B97F4A7C15  # spreads the seeds of neighbouring prompts


def prompt_seed(seed: int | None, index: int) -> int | None:
    """The sampling seed of prompt (or sample) ``index``: the seed itself for the first."""
    return None if seed is None else (seed + index * GOLDEN) % 2**64


@dataclass(frozen=True, kw_only=True)
class Job:
    """What the engine is asked for: samples ``first_sample`` .. ``first_sample + samples - 1`` of
    one prompt (token ids, already checked to fit the context window)."""

    ids: list[int]
    settings: GenerationSettings
    max_new_tokens: int | None = None  # None: the settings'
    seed: int | None = None  # the prompt's sampling seed (sample s draws from prompt_seed(seed, s))
    index: int | None = None  # tagged on its events; None: the id ``add`` returns
    first_sample: int = 0
    samples: int | None = None  # None: the settings' num_samples

    @property
    def rows(self) -> int:
        return self.settings.num_samples if self.samples is None else self.samples


@dataclass
class Row:
    """One sample of a prompt in flight."""

    job: int  # the id of its job
    index: int
    prompt_ids: list[int]
    settings: GenerationSettings  # its request's: how its tokens are chosen, when it stops
    budget: int  # new tokens it may generate (max_new_tokens, or less near the context's end)
    text: SampleText
    generator: torch.Generator | None
    history: TokenHistory | None
    start: float  # when it was admitted
    sample: int = 0
    first: float = 0.0  # when its first token was chosen
    token: int = 0  # the last token chosen, fed back at the next step
    ready: bool = False  # its prompt is prefilled: it decodes at each step
    cached: int = 0  # leading prompt tokens whose keys and values came from the prefix cache
    lookup: PromptLookup | None = None  # greedy with --lookup: drafts of its next tokens
    drafted: int = 0
    accepted: int = 0
    replay: list[int] | None = None  # resumed after preemption: tokens whose keys and values it recomputes

    @property
    def held(self) -> list[int]:
        """The tokens whose keys and values its cache row holds (all but the last chosen)."""
        return self.prompt_ids + self.text.ids[:-1]

    @property
    def position(self) -> int:
        """Where the last chosen token goes in the cache."""
        return len(self.prompt_ids) + self.text.count - 1


@dataclass
class Prefill:
    """An admitted job whose prompt is being prefilled into the row of its first sample."""

    job: int
    slots: list[int]  # its rows, one per sample; the first is prefilled, the others copy it after
    pieces: deque  # the (start, end) pieces still to prefill
    origin: Job | None = None  # what was asked: None for a preempted row's prompt, prefilled again
