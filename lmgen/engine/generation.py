"""The generation loop: prefill the prompt once, then one token at a time.

``decode_loop`` is the model side: it prefills the prompt, then yields the next
token (and the logits it came from) until the token budget is spent.
``generate`` is the text side: it turns tokens into ``Token`` events (text that is
safe to print) and ends each sample with a ``Finished`` event whose reason is
"stop" (an end-of-sequence token or a stop string) or "length" (``max_new_tokens``
or the context window). Several samples of one prompt, like many prompts, decode
together on the engine of ``batching.py`` (which holds ``generate``, for one prompt and any
number of samples), keeping the same rules per row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch

from lmgen.engine.constraint import Matcher, compiled
from lmgen.engine.events import Finished, Token  # noqa: F401 (also from here)
from lmgen.engine.load import LanguageModel, load, parse_device, parse_dtype  # noqa: F401 (load: also from here)
from lmgen.engine.sampling import TokenHistory, sample_next_token
from lmgen.engine.settings import GenerationSettings, SamplingSettings  # noqa: F401 (also from here)
from lmgen.errors import CheckpointError, InputError
from lmgen.model.decoder import Decoder
from lmgen.text.stops import StopStrings
from lmgen.text.tokenizer import check_token_ids
from lmgen.text.utf8 import utf8_text


LOGIT_LIMIT = 1e4  # no trained model comes near: at ±1e4 a softmax is one-hot in float64


def require_sound(logits: torch.Tensor) -> None:
    """Logits that are NaN or infinite, the same for every token of a row, or beyond ±LOGIT_LIMIT
    mean broken weights (or an overflow): never sample text from them, never score with them.
    (One pass: each row's least and greatest, NaN spreading to both.)"""
    low, high = torch.aminmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
    least, most = float(low.min()), float(high.max())
    if not (math.isfinite(least) and math.isfinite(most)):
        raise CheckpointError("the model computed NaN or infinite logits: its weights are broken "
                              "(or overflow in this dtype); no text was generated from them")
    if max(-least, most) > LOGIT_LIMIT:
        raise CheckpointError(f"the model computed a logit of {least if -least > most else most:.4g}, beyond what a "
                              f"trained model reaches (±{LOGIT_LIMIT:g}): its weights are broken; no text was "
                              "generated from them")
    if logits.shape[-1] > 1 and bool((low == high).any()):
        raise CheckpointError(f"the model computed the same logit ({float(low[low == high][0]):.4g}) for every token: "
                              "its weights are broken; no text was generated from them")


class PromptTooLong(InputError):
    """A prompt with no room left in the context window (a server's ``context_length_exceeded``)."""


def check_fits(prompt_ids: list[int], context: int) -> None:
    if not prompt_ids:
        raise InputError("the prompt is empty")
    if len(prompt_ids) >= context:
        raise PromptTooLong(
            f"the prompt has {len(prompt_ids)} tokens but the context window holds {context}; "
            "shorten it or pass --truncate to keep its end"
        )


def keep_end(prompt_ids: list[int], context: int, max_new_tokens: int) -> list[int]:
    """The last tokens of the prompt that leave room for max_new_tokens (at least one prompt token)."""
    room = max(1, context - max_new_tokens)
    return prompt_ids[-room:]


PREFILL_CHUNK = 64  # prompt tokens per prefill piece at most
PREFILL_WORK = PREFILL_CHUNK * 1024  # a piece's work at most, as piece_work counts it
SMALLEST_PIECE = 16  # (the matrix unit's rows: smaller pieces would waste its tiles)


def piece_work(start: int, end: int) -> int:
    """The work of prefilling positions start..end: tokens × keys they attend over, counted as at
    least 1,024 keys (below that the projections cost more than attention)."""
    return (end - start) * max(end, 1024)


def prefill_chunks(start: int, end: int) -> list[tuple[int, int]]:
    """The pieces [a, b) in which positions start..end of a prompt are prefilled: 64 tokens from
    ``start`` (the first not already cached), fewer past position 1,024 (down to 16), so that a
    piece's work stays about PREFILL_WORK however many keys it attends over. Every path cuts a
    prompt the same way — alone, batched, served, whatever its neighbours — because a pass over
    other pieces computes other bits (attention and matmuls add in another order); so the text
    does not depend on them. The server prefills about one piece's work per step between its
    streams' decode steps."""
    pieces, a = [], start
    while a < end:
        size = max(SMALLEST_PIECE, min(PREFILL_CHUNK, PREFILL_WORK // max(a, 1024)))
        pieces.append((a, min(a + size, end)))
        a += size
    return pieces


def decode_loop(model: Decoder, prompt_ids: list[int], settings: GenerationSettings,
                matcher: Matcher | None = None, cache=None, cached: int = 0) -> Iterator[tuple]:
    """Yield (tokens, logits) per step for one continuation of the prompt: the next token, shape
    (1,), and the LM head's logits it was chosen from, (1, vocab). With a matcher, tokens it rules
    out are never chosen (the caller advances it). Given a KV cache that holds the keys and values
    of prompt_ids[:cached] (a conversation's earlier turns), only the rest is prefilled. (Several
    samples, or several prompts, decode together in ``batching``.)

    The prompt is prefilled once. The loop ends after max_new_tokens steps or when the context
    window is full; the caller may stop earlier.
    """
    context = model.cfg.max_context
    check_fits(prompt_ids, context)
    budget = min(settings.max_new_tokens, context - len(prompt_ids))
    device = model.device
    generator = torch.Generator(device).manual_seed(settings.seed) if settings.seed is not None else None
    history = TokenHistory(prompt_ids, 1, model.cfg.vocab_size, device) if settings.sampling.uses_history else None
    if cache is None:
        cache = model.new_cache(batch=1, max_len=len(prompt_ids) + budget)
    forward = torch.inference_mode()(model)  # per call: the caller's code between steps keeps its own mode
    for start, end in prefill_chunks(cached, len(prompt_ids)):
        logits = forward(torch.tensor([prompt_ids[start:end]], device=device), start, cache, last_only=True)[:, -1]
    require_sound(logits)
    for step in range(budget):
        scores = logits if matcher is None else matcher.restrict(logits)
        tokens = sample_next_token(scores, settings.sampling, generator, history)
        yield tokens, logits
        if step == budget - 1:
            return
        if history is not None:
            history.add(tokens)
        logits = forward(tokens[:, None], len(prompt_ids) + step, cache, last_only=True)[:, -1]
        require_sound(logits)


def is_token_ids(prompt) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(type(i) is int for i in prompt)


def refuse_what_cannot_fit(lm: LanguageModel, text: str) -> None:
    """A text with more bytes than the context's tokens could stand for, each as long as the
    longest, is refused before it is tokenized (a 1 MB prompt costs a second of tokenizer
    time otherwise, and a server holds up its other work meanwhile)."""
    context = lm.config.max_context
    if len(text) <= context:  # (characters: at most its bytes, so none can be ruled out yet)
        return
    size = len(text.encode("utf-8"))
    if size > context * lm.longest_token_bytes:
        raise PromptTooLong(f"the prompt has {size} bytes, more than the context window's {context} tokens can "
                            f"hold (at most {lm.longest_token_bytes} bytes each); shorten it or pass --truncate "
                            "to keep its end")


def check_logit_bias(lm: LanguageModel, settings: GenerationSettings) -> None:
    """Every token logit_bias names is in the model's vocabulary (InputError("logit-bias ...")."""
    check_token_ids((token for token, _ in settings.sampling.logit_bias), lm.config.vocab_size, "logit-bias ")


def prompt_ids_for(lm: LanguageModel, prompt: str | list[dict] | list[int], settings: GenerationSettings) -> list[int]:
    """Token ids of the prompt: text, messages rendered with the model's chat template, or token
    ids (each checked to be in the vocabulary). Any of them empty is refused, as are settings the
    model cannot honour (show_probs, logit_bias)."""
    if settings.show_probs > lm.config.vocab_size:
        raise InputError(f"show-probs must be at most the vocabulary size ({lm.config.vocab_size}), got {settings.show_probs}")
    check_logit_bias(lm, settings)
    if is_token_ids(prompt):
        ids = list(prompt)
        check_token_ids(ids, lm.config.vocab_size)
    else:
        if not isinstance(prompt, str):
            from lmgen.text.chat import check_messages

            check_messages(prompt)
        if not prompt:
            raise InputError("the prompt is empty")
        if isinstance(prompt, str):  # (messages are checked by check_messages)
            utf8_text(prompt, "the prompt")
        text = lm.prompt_text(prompt)
        if not settings.truncate:
            refuse_what_cannot_fit(lm, text)
        ids = lm.encode_prompt(text)
    if settings.truncate:
        ids = keep_end(ids, lm.config.max_context, settings.max_new_tokens)
    check_fits(ids, lm.config.max_context)
    return ids


class SampleText:
    """One continuation's text state: incremental decoding, stop strings and the constraint's matcher."""

    def __init__(self, lm: LanguageModel, settings: GenerationSettings):
        self.stream = lm.tokenizer.stream()
        self.stops = StopStrings(list(settings.stop))
        self.matcher = compiled(lm, settings.constraint).matcher() if settings.constraint else None
        self.ids: list[int] = []
        self.text = ""  # released so far

    @property
    def count(self) -> int:
        return len(self.ids)

    def push(self, token: int) -> tuple[str, bool]:
        """The text the token releases, and whether the sample ends with it (a stop string, or
        an output the constraint allows nothing after)."""
        self.ids.append(token)
        text, stopped = self.stops.push(self.stream.push(token))
        self.text += text
        if self.matcher is not None:
            self.matcher.advance(token)
            stopped = stopped or self.matcher.stopped
        return text, stopped

    def flush(self) -> str:
        text, stopped = self.stops.push(self.stream.flush())
        tail = text if stopped else text + self.stops.flush()
        self.text += tail
        return tail

    def finished(self, reason: str, tail: str, prompt_tokens: int, start: float, first: float, sample: int,
                 index: int = 0, cached: int = 0) -> "Finished":
        """The sample's closing event; tail is what the sample released last (already counted)."""
        m = self.matcher
        return Finished(reason=reason, text=tail, prompt_tokens=prompt_tokens, new_tokens=self.count,
                        prefill_seconds=first - start, decode_seconds=time.perf_counter() - first, sample=sample,
                        index=index, output=self.text, token_ids=tuple(self.ids), complete=m and m.complete,
                        constraint_seconds=m.seconds if m else 0.0, cached_tokens=cached,
                        stop_sequence=self.stops.matched if reason == "stop" else None)


def events_alone(lm: LanguageModel, prompt_ids: list[int], settings: GenerationSettings, cache=None,
            cached: int = 0) -> Iterator:
    sample = SampleText(lm, settings)
    start = time.perf_counter()
    first = None
    for tokens, logits in decode_loop(lm.model, prompt_ids, settings, sample.matcher, cache, cached):
        first = first or time.perf_counter()
        token = int(tokens[0])
        if token in lm.eos_ids:
            yield sample.finished("stop", sample.flush(), len(prompt_ids), start, first, 0, cached=cached)
            return
        text, stopped = sample.push(token)
        probs = probabilities(logits, tokens, settings.show_probs)
        prob, top = probs[0] if probs else (None, ())
        yield Token(id=token, text=text, sample=0, prob=prob, top=top)
        if stopped:
            yield sample.finished("stop", "", len(prompt_ids), start, first, 0, cached=cached)
            return
    yield sample.finished("length", sample.flush(), len(prompt_ids), start, first, 0, cached=cached)


def probabilities(logits, tokens, k: int) -> list[tuple[float, tuple]] | None:
    """Per sample: the chosen token's probability and the k most likely (id, probability)."""
    if k <= 0:
        return None
    probs = logits.float().softmax(dim=-1)
    chosen = probs.gather(-1, tokens[:, None])[:, 0].tolist()
    top = probs.topk(k, dim=-1)
    pairs = [tuple(zip(ids, ps)) for ids, ps in zip(top.indices.tolist(), top.values.tolist())]
    return list(zip(chosen, pairs))
