"""The generation loop: prefill the prompt once, then one token at a time.

``generate`` is a generator of events: a ``Token`` for every new token (with
the text it adds, already safe to print) and one closing ``Finished`` that says
why generation stopped. Stopping rules live in ``decode_loop`` and nowhere else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmgen.checkpoint import load_model
from lmgen.config import ModelConfig
from lmgen.errors import CheckpointError, InputError
from lmgen.model import Decoder
from lmgen.sampling import SamplingSettings, sample_next_token
from lmgen.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LanguageModel:
    """A loaded model with its tokenizer: what ``generate`` needs."""

    model: Decoder
    tokenizer: Tokenizer
    config: ModelConfig
    path: Path
    eos_ids: frozenset[int] = field(default_factory=frozenset)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[name]


def parse_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r} (try cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} is not available on this machine (no CUDA GPU)")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {name!r} is not supported (use cpu or cuda)")
    return device


def load(path: str | Path, dtype: str = "float32", device: str = "cpu") -> LanguageModel:
    """Load a checkpoint directory (config + safetensors + tokenizer.json)."""
    torch_dtype, torch_device = parse_dtype(dtype), parse_device(device)
    model, cfg, files = load_model(path, torch_dtype, torch_device)
    if files.tokenizer is None:
        raise CheckpointError(f"{files.root} has no tokenizer.json")
    tokenizer = Tokenizer(files.tokenizer)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has only {cfg.vocab_size}"
        )
    return LanguageModel(model, tokenizer, cfg, files.root, frozenset(_eos_ids(cfg, files.root)))


def _eos_ids(cfg: ModelConfig, root: Path) -> set[int]:
    """EOS ids from the config, plus any that generation_config.json adds."""
    ids = set(cfg.eos_token_ids)
    gen_config = root / "generation_config.json"
    if gen_config.is_file():
        try:
            value = json.loads(gen_config.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError):
            value = None
        ids.update(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
    return ids


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    sampling: SamplingSettings = SamplingSettings()
    seed: int | None = None
    truncate: bool = False  # keep the end of a prompt that leaves no room to generate

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max-new-tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Token:
    id: int
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" (EOS) or "length" (max-new-tokens or the context window)
    text: str  # held-back text flushed at the end (usually empty)
    prompt_tokens: int
    new_tokens: int
    prefill_seconds: float  # prompt forward pass and first token: time to first token
    decode_seconds: float  # every later token


def check_fits(prompt_ids: list[int], context: int) -> None:
    if not prompt_ids:
        raise InputError("the prompt is empty")
    if len(prompt_ids) >= context:
        raise InputError(
            f"the prompt has {len(prompt_ids)} tokens but the context window holds {context}; "
            "shorten it or pass --truncate to keep its end"
        )


def decode_loop(
    model: Decoder, prompt_ids: list[int], settings: GenerationSettings, eos_ids: frozenset[int]
) -> Iterator[tuple[int, str | None]]:
    """Yield (token id, finish reason or None); the last item carries the reason.

    An EOS token is yielded with reason "stop" and is not part of the text.
    """
    context = model.cfg.max_context
    check_fits(prompt_ids, context)
    budget = min(settings.max_new_tokens, context - len(prompt_ids))
    device = model.embed.weight.device
    generator = torch.Generator(device).manual_seed(settings.seed) if settings.seed is not None else None
    cache = model.new_cache(batch=1, max_len=len(prompt_ids) + budget)
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids], device=device), 0, cache, last_only=True)[:, -1]
        for step in range(budget):
            token = int(sample_next_token(logits, settings.sampling, generator))
            if token in eos_ids:
                yield token, "stop"
                return
            if step == budget - 1:
                yield token, "length"
                return
            yield token, None
            position = len(prompt_ids) + step
            logits = model(torch.tensor([[token]], device=device), position, cache, last_only=True)[:, -1]


def keep_end(prompt_ids: list[int], context: int, max_new_tokens: int) -> list[int]:
    """The last tokens of the prompt that leave room for max_new_tokens (at least one prompt token)."""
    room = max(1, context - max_new_tokens)
    return prompt_ids[-room:]


def generate(lm: LanguageModel, prompt: str, settings: GenerationSettings = GenerationSettings()) -> Iterator:
    """Stream ``Token`` events for the continuation of ``prompt``, then one ``Finished``.

    A prompt that cannot be used raises here, before any event is produced.
    """
    prompt_ids = lm.tokenizer.encode(prompt)
    if settings.truncate:
        prompt_ids = keep_end(prompt_ids, lm.config.max_context, settings.max_new_tokens)
    check_fits(prompt_ids, lm.config.max_context)
    return _events(lm, prompt_ids, settings)


def _events(lm: LanguageModel, prompt_ids: list[int], settings: GenerationSettings) -> Iterator:
    stream = lm.tokenizer.stream()
    start = time.perf_counter()
    first = None
    count = 0
    for token, reason in decode_loop(lm.model, prompt_ids, settings, lm.eos_ids):
        first = first or time.perf_counter()
        if reason != "stop":
            count += 1
            yield Token(token, stream.push(token))
        if reason is not None:
            end = time.perf_counter()
            yield Finished(reason, stream.flush(), len(prompt_ids), count, first - start, end - first)
