"""Decode speed of every family at one shape: SmolLM2-135M's sizes, random weights.

    python scripts/bench_families.py                 # fp32, 64 new tokens, 3 rounds
    python scripts/bench_families.py --dtype q8 --tokens 128 --reps 5

Each family's config is SmolLM2-135M's (576 wide, 30 layers, 9 query and 3 key/value heads
of 64, MLP 1536, vocab 49152, tied) with that family's own features switched on: Gemma's
sandwich norms, soft-caps and sliding layers, Qwen3's q/k norms, Phi-4-mini's partial rotary
with longrope, OLMo 2's post-norms, SmolLM3's layers without positions, Llama 3's rope scaling.
The families are timed in turn, round after round (interleaved, so that a noisy machine hurts
them alike); each line gives the median decode tokens/s and its ratio to llama's. It also
says whether the decode step ran in the native kernels. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmgen.formats.hf_config import from_hf  # noqa: E402
from lmgen.model.decoder import Decoder  # noqa: E402
from lmgen.model.linear import quantize_blocks  # noqa: E402
from lmgen.model.quant import FORMATS  # noqa: E402

SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
             rms_norm_eps=1e-5, tie_word_embeddings=True)
FAMILIES = {
    "gpt2": dict(n_embd=576, n_layer=30, n_head=9, n_positions=8192, vocab_size=49152),
    "llama": dict(rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=2048)),
    "mistral": dict(sliding_window=64),
    "qwen2": dict(),
    "qwen3": dict(),
    "gemma2": dict(sliding_window=64, query_pre_attn_scalar=64, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0),
    "gemma3_text": dict(sliding_window=64, query_pre_attn_scalar=64, rope_local_base_freq=10000.0),
    "phi3": dict(partial_rotary_factor=0.75, original_max_position_embeddings=4096, rope_scaling=dict(
        type="longrope", short_factor=[1.0] * 24, long_factor=[4.0] * 24)),
    "olmo2": dict(),
    "smollm3": dict(),
}


def random_model(family: str, dtype: str) -> Decoder:
    hf = {"model_type": family, **(FAMILIES[family] if family == "gpt2" else {**SHAPE, **FAMILIES[family]})}
    cfg = from_hf(hf)
    torch.manual_seed(0)
    model = Decoder(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
            else:  # norms near 1 (offset ones near 0), biases near 0
                p.normal_(0, 0.02).add_(1.0 - cfg.norm_offset if name.endswith("norm.weight") else 0.0)
    model.tie_weights()
    model.eval()
    return quantize_blocks(model, FORMATS["q8_0"], FORMATS["q8_0"]) if dtype == "q8" else model


def decode_rate(model: Decoder, tokens: int) -> float:
    """New tokens per second after the first, greedy, from a 16-token prompt."""
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model.new_cache(1, 16 + tokens)
        next_id = model(ids, 0, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for pos in range(16, 16 + tokens - 1):
            next_id = model(next_id, pos, cache)[:, -1].argmax(-1, keepdim=True)
    return (tokens - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["fp32", "q8"], default="fp32")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    models = {family: random_model(family, args.dtype) for family in FAMILIES}
    for model in models.values():
        decode_rate(model, 8)  # warm-up: kernels built, pages touched
    rates: dict[str, list[float]] = {family: [] for family in models}
    for _ in range(args.reps):
        for family, model in models.items():
            rates[family].append(decode_rate(model, args.tokens))
    base = statistics.median(rates["llama"])
    print(f"{'family':12} {'params':>7} {'native':>6} {'tok/s':>7} {'vs llama':>8}   ({args.dtype}, "
          f"{args.tokens} new tokens, median of {args.reps})")
    for family, model in models.items():
        params = sum(p.numel() for p in {id(t): t for t in (*model.parameters(), *model.buffers())}.values())
        model.new_cache(1, 8)
        native = "yes" if model.plan is not None else "no"
        rate = statistics.median(rates[family])
        print(f"{family:12} {params / 1e6:6.0f}M {native:>6} {rate:7.1f} {rate / base:8.2f}")


if __name__ == "__main__":
    main()
