"""What generation yields: a ``Token`` per chosen token, a ``Finished`` per sample. Plain data, no
torch: the CLI's remote paths (``--server``) build and print them too."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Token:
    id: int
    text: str  # the text this token releases (may be empty while a character or stop string is pending)
    sample: int = 0
    prob: float | None = None  # softmax of the LM head's logits for the chosen token (with show_probs)
    top: tuple[tuple[int, float], ...] = ()  # the most likely (id, probability) pairs (with show_probs)
    index: int = 0  # the prompt's, with several prompts (batching.generate_many)


@dataclass(frozen=True, kw_only=True)
class Finished:
    reason: str  # "stop" (EOS or a stop string) or "length" (max-new-tokens or the context window)
    text: str  # held-back text released at the end (usually empty)
    prompt_tokens: int
    new_tokens: int
    prefill_seconds: float  # prompt forward pass and first token: time to first token
    decode_seconds: float  # every later token
    sample: int = 0
    index: int = 0  # the prompt's, with several prompts (batching.generate_many)
    output: str = ""  # the sample's whole text (every Token's text, then this event's)
    token_ids: tuple[int, ...] = ()  # the sample's tokens (an end-of-sequence token is not one)
    complete: bool | None = None  # with a constraint: whether it accepts the output (None: no constraint)
    constraint_seconds: float = 0.0  # spent computing the constraint's masks
    stop_sequence: str | None = None  # the stop string that ended it (None: another end)
    cached_tokens: int = 0  # leading prompt tokens not prefilled: their keys and values were cached
    drafted: int = 0  # tokens prompt lookup drafted (--lookup)
    accepted: int = 0  # ... and the model chose too: each saved a decode step


@dataclass(frozen=True, kw_only=True)
class Failed:
    """A job the engine ended with an error of its own (its constraint's matcher gave up): its
    other samples end with it, and no other job is touched."""

    message: str
    index: int = 0
    sample: int = 0
