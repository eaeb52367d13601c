"""What a generation is asked to do: ``SamplingSettings`` (how each token is chosen) and
``GenerationSettings`` (budget, seed, stops, samples, constraint), each checked where it is made.
No torch: the command line builds them before deciding whether a model is needed at all
(``generate --server`` never loads one). ``engine.sampling`` and ``engine.generation`` use them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmgen.errors import InputError
from lmgen.text.utf8 import utf8_text

if TYPE_CHECKING:
    from lmgen.engine.constraint import Constraint

# --dtype: float weights (name → torch dtype's name), and block-quantized ones (lmgen.model.quant,
# fp32 activations: name → the projections' format, the token embedding's and LM head's; 4-bit
# keeps those two at 8 bits, as llama.cpp does). Torch-free, so the help lists them all.
FLOAT_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "fp16": "float16"}
QUANTIZED = {"q8": ("q8_0", "q8_0"), "q8_0": ("q8_0", "q8_0"), "q4": ("q4_1", "q8_0"), "q4_1": ("q4_1", "q8_0"),
             "q4_0": ("q4_0", "q8_0"), "int8": ("q8_0", "q8_0")}  # int8: the 8-bit format's old name

# --kv-dtype: the KV cache's (name → torch dtype's name); bf16 halves its memory (see the README's
# measurements of its accuracy).
KV_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
             "q8_0": "int8"}  # q8_0: int8 with one fp32 scale per position and head (kv_cache.quantize_q8)

# Ranges in which no option can overflow fp32 arithmetic on a model's finite logits (|logit| far
# below 1e20 for any working model): a logit is scaled by at most 1e6 / 1e-6 and shifted by at most
# the context length times 1e6. Wider values are refused where they are parsed.
MAX_LOOKUP = 64  # tokens drafted at most: a decode step's rows
BOUNDS = (("temperature", 1e-6, 1e6), ("repetition_penalty", 1e-6, 1e6),
          ("frequency_penalty", -1e6, 1e6), ("presence_penalty", -1e6, 1e6))
# logit_bias (OpenAI's): at most this many tokens, each shifted by a number from -LOGIT_BIAS to
# LOGIT_BIAS (-100 in practice bans a token, +100 all but forces it).
MAX_LOGIT_BIAS, LOGIT_BIAS = 1024, 100


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    temperature: float = 0.0
    top_k: int = 0  # 0 keeps every token
    top_p: float = 1.0  # 1 keeps every token
    min_p: float = 0.0  # 0 keeps every token
    typical_p: float = 1.0  # 1 keeps every token
    repetition_penalty: float = 1.0  # 1 is off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # added to these tokens' logits first (OpenAI's logit_bias): (id, bias) pairs sorted by id; a
    # mapping {id: bias} or any pairs are accepted and kept in this form (hashable, order-free)
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "logit_bias", _logit_bias_pairs(self.logit_bias))
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0 (0 means greedy), got {self.temperature}"),
            (self.top_k >= 0, f"top-k must be >= 0 (0 disables it), got {self.top_k}"),
            (0 < self.top_p <= 1, f"top-p must be in (0, 1], got {self.top_p}"),
            (0 <= self.min_p <= 1, f"min-p must be in [0, 1], got {self.min_p}"),
            (0 < self.typical_p <= 1, f"typical-p must be in (0, 1], got {self.typical_p}"),
            (self.repetition_penalty > 0, f"repetition-penalty must be > 0 (1 disables it), got {self.repetition_penalty}"),
        ]
        for name in ("temperature", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            checks.append((math.isfinite(value), f"{name.replace('_', '-')} must be a finite number, got {value}"))
        for name, low, high in BOUNDS:
            value = getattr(self, name)
            if name == "temperature" and value == 0:
                continue
            zero = "0 (greedy) or " if name == "temperature" else ""
            checks.append((low <= value <= high or not math.isfinite(value),
                           f"{name.replace('_', '-')} must be {zero}from {low:g} to {high:g}, got {value}"))
        for ok, message in checks:
            if not ok:  # also catches NaN
                raise InputError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_history(self) -> bool:
        return self.repetition_penalty != 1 or self.frequency_penalty != 0 or self.presence_penalty != 0


def _logit_bias_pairs(given) -> tuple[tuple[int, float], ...]:
    """logit_bias as sorted (id, bias) pairs, each id a token id (>= 0; the model's vocabulary is
    checked where it is known: ``generation.check_logit_bias``) given once, each bias a number from
    -LOGIT_BIAS to LOGIT_BIAS, at most MAX_LOGIT_BIAS of them; else InputError("logit-bias ...")."""
    items = given.items() if isinstance(given, Mapping) else given
    try:
        if isinstance(given, (str, bytes)):
            raise TypeError
        pairs = [tuple(pair) for pair in items]
    except TypeError:
        raise InputError(f"logit-bias must map token ids to biases, got {_shown(given)}") from None
    if len(pairs) > MAX_LOGIT_BIAS:
        raise InputError(f"logit-bias may hold at most {MAX_LOGIT_BIAS} tokens, got {len(pairs)}")
    out: dict[int, float] = {}
    for pair in pairs:
        if len(pair) != 2:
            raise InputError(f"logit-bias must map token ids to biases, got {_shown(pair)}")
        token, bias = pair
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise InputError(f"logit-bias token ids must be integers >= 0, got {_shown(token)}")
        if token >= 2**31:
            raise InputError(f"logit-bias token id {_shown(token)} is beyond any model's vocabulary")
        number = isinstance(bias, (int, float)) and not isinstance(bias, bool)
        if not (number and -LOGIT_BIAS <= bias <= LOGIT_BIAS):  # (NaN compares false)
            raise InputError(f"logit-bias of token {token} must be a number from {-LOGIT_BIAS} to {LOGIT_BIAS}, "
                             f"got {_shown(bias)}")
        if token in out:
            raise InputError(f"logit-bias gives token {token} more than one bias")
        out[token] = float(bias)
    return tuple(sorted(out.items()))


def _shown(value) -> str:
    """A value for an error message, at most 60 characters (an int of any size: its digits' count)."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python prints
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= 60 else text[:57] + "..."


MAX_SAMPLES = 1 << 16  # continuations of one prompt (each takes a row while it runs)
MAX_ROWS = 1 << 16  # rows an engine may be asked for: --batch-size (its cache holds only those in use)


@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    max_new_tokens: int = 128
    sampling: SamplingSettings = SamplingSettings()
    seed: int | None = None
    truncate: bool = False  # keep the end of a prompt that leaves no room to generate
    stop: tuple[str, ...] = ()  # stop strings: never printed, end the sample
    num_samples: int = 1  # independent continuations, batched
    show_probs: int = 0  # report each token's probability and this many alternatives
    constraint: Constraint | None = None  # output a JSON schema, regex or grammar accepts (lmgen.engine.constraint)
    lookup: int = 0  # greedy: tokens drafted from the text so far and checked in one step (engine.lookup)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not 1 <= self.num_samples <= MAX_SAMPLES:
            raise InputError(f"num-samples must be from 1 to {MAX_SAMPLES}, got {self.num_samples}")
        if not 0 <= self.lookup <= MAX_LOOKUP:
            raise InputError(f"lookup must be from 0 to {MAX_LOOKUP}, got {self.lookup}")
        if self.show_probs < 0:
            raise InputError(f"show-probs must be >= 0, got {self.show_probs}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise InputError(f"seed must be from 0 to 2**64 - 1, got {self.seed}")
        if any(not stop for stop in self.stop):
            raise InputError("a --stop string must not be empty")
        for stop in self.stop:
            utf8_text(stop, "a --stop string")
