"""What a generation is asked to do: ``SamplingSettings`` (how each token is chosen) and
``GenerationSettings`` (budget, seed, stops, samples, constraint), each checked where it is made.
No torch: the command line builds them before deciding whether a model is needed at all
(``generate --server`` never loads one). ``engine.sampling`` and ``engine.generation`` use them."""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.0
    top_k: int = 0  # 0 keeps every token
    top_p: float = 1.0  # 1 keeps every token
    min_p: float = 0.0  # 0 keeps every token
    typical_p: float = 1.0  # 1 keeps every token
    repetition_penalty: float = 1.0  # 1 is off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def __post_init__(self) -> None:
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


MAX_SAMPLES = 1 << 16  # continuations of one prompt (each takes a row while it runs)
MAX_ROWS = 1 << 16  # rows an engine may be asked for: --batch-size (its cache holds only those in use)


@dataclass(frozen=True)
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
