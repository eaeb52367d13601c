"""GGUF files of the mixes llama.cpp's quantizer makes, for ``scripts/bench.py --dtypes``.

    python scripts/make_mixes.py OUTDIR              # from the default model
    python scripts/make_mixes.py OUTDIR --llama-1b   # and the same mixes at a ~1B Llama shape
    python scripts/make_mixes.py OUTDIR --llama 3b,8b --mixes q4_k_m   # larger shapes, chosen mixes

From the default model (SmolLM2-135M: rows of 576 and 1536 values) it writes

    q5_0.gguf, q5_1.gguf   every matrix but the embedding in that format, from the model's weights
    q4_k_m.gguf            as llama.cpp's Q4_K_M: rows that are not a multiple of 256 fall back
                           to Q5_0 (Q8_0 where the mix wants Q6_K: attn_v of the layers given more
                           bits), ffn_down Q6_K in those layers and Q4_K in the others
    q5_k_m.gguf            the same with Q5_1 and Q5_K
    q6_k.gguf              Q6_K where rows allow it, else Q8_0
    q4_k_m-q8_0.gguf       q4_k_m.gguf with every block tensor re-quantized to Q8_0: what lmgen
                           ran before it read these formats

The gguf library cannot make K-quants, so their tensors are random blocks of the same shapes
(small finite scales): the text is noise, the speed is what a real file's would be. With
--llama-1b: the mixes q4_k_m, q6_k, q8_0 and q4_1 at Llama 3.2 1B's shape (2048 wide, 16
layers, 8192 MLP, tied embedding of 49152 tokens), every tensor random blocks. --llama SIZES
(1b, 3b, 8b) writes llama-SIZE-MIX.gguf at those shapes (3B: Llama 3.2 3B's 3072 wide, 28
layers, 8192 MLP, 24 heads; 8B: Llama 3.1 8B's 4096, 32, 14336, 32 heads; 8 KV heads each), with
the default model's tokenizer, so a tied embedding of 49152 tokens (theirs have 128256), for
the --mixes given (default: all four). It reports nothing; bench.py measures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter, quants

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmgen.formats.paths import bundled_gguf  # noqa: E402

BLOCK = {Q.Q4_K: (144, 256), Q.Q5_K: (176, 256), Q.Q6_K: (210, 256), Q.Q8_0: (34, 32), Q.Q4_1: (20, 32),
         Q.Q5_0: (22, 32), Q.Q5_1: (24, 32), Q.Q4_0: (18, 32)}
HALVES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.Q8_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,),
          Q.Q5_1: (0, 2), Q.Q4_0: (0,)}
FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}  # llama.cpp's, for rows not a multiple of 256


def random_blocks(qtype, rows: int, k: int, rng) -> np.ndarray:
    size, values = BLOCK[qtype]
    b = rng.integers(0, 256, size=(rows, k // values, size), dtype=np.uint8)
    scale = 2e-5 if qtype == Q.Q6_K else 1e-4
    for at in HALVES[qtype]:
        b[..., at : at + 2] = rng.uniform(-scale, scale, size=b.shape[:2]).astype(np.float16).view(np.uint8).reshape(
            *b.shape[:2], 2)
    return b.reshape(rows, -1)


def more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's use_more_bits: the layers a _M mix gives a larger type to."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def mix_type(mix: str, name: str, k: int, layers: int):
    """The type of matrix ``name`` (rows of k values) in ``mix``."""
    if name == "token_embd.weight":
        return Q.Q8_0 if k % 256 or mix in ("q5_0", "q5_1", "q8_0") else {"q4_1": Q.Q4_1}.get(mix, Q.Q4_K)
    if mix in ("q5_0", "q5_1", "q8_0", "q4_1"):
        return Q[mix.upper()]
    layer = int(name.split(".")[1])
    if mix == "q6_k":
        wanted = Q.Q6_K
    else:
        base = Q.Q4_K if mix == "q4_k_m" else Q.Q5_K
        wanted = Q.Q6_K if name.endswith(("attn_v.weight", "ffn_down.weight")) and more_bits(layer, layers) else base
    return FALLBACK[wanted] if k % 256 else wanted


def copy_metadata(reader: GGUFReader, writer: GGUFWriter, skip=("GGUF.", "general.architecture")) -> None:
    for field in reader.fields.values():
        if field.name.startswith(skip):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub)


def write(path: Path, arch: str, metadata, tensors) -> None:
    """A GGUF file: metadata(writer) adds the keys; tensors yields (name, array, raw qtype or None)."""
    writer = GGUFWriter(str(path), arch=arch)
    metadata(writer)
    for name, array, qtype in tensors:
        writer.add_tensor(name, array, raw_dtype=qtype) if qtype is not None else writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")


def from_default(mix: str, out: Path, requantize: bool = False) -> None:
    reader = GGUFReader(bundled_gguf())
    layers = int(reader.fields["llama.block_count"].contents())
    rng = np.random.default_rng(0)

    def tensors():
        for t in reader.tensors:
            weights = quants.dequantize(t.data, t.tensor_type)
            if weights.ndim == 1:
                yield t.name, weights.astype(np.float32), None
                continue
            qtype = mix_type(mix, t.name, weights.shape[1], layers)
            if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
                blocks = random_blocks(qtype, *weights.shape, rng)
                if requantize:  # what lmgen did before: the blocks dequantized, then Q8_0
                    yield t.name, quants.quantize(quants.dequantize(blocks, qtype), Q.Q8_0), Q.Q8_0
                else:
                    yield t.name, blocks, qtype
            else:
                yield t.name, quants.quantize(weights, Q.Q8_0 if requantize else qtype), Q.Q8_0 if requantize else qtype

    write(out, "llama", lambda w: copy_metadata(reader, w), tensors())


SHAPES = {"1b": (2048, 8192, 16, 32), "3b": (3072, 8192, 28, 24), "8b": (4096, 14336, 32, 32)}  # d, mlp, layers, heads


def llama_shape(size: str, mix: str, out: Path) -> None:
    reader = GGUFReader(bundled_gguf())
    (d, mlp, layers, heads), kv, vocab = SHAPES[size], 8, 49152
    rng = np.random.default_rng(1)

    def metadata(w: GGUFWriter) -> None:
        for field in reader.fields.values():
            if field.name.startswith("tokenizer."):
                vtype = field.types[0]
                w.add_key_value(field.name, field.contents(), vtype,
                                field.types[1] if vtype == GGUFValueType.ARRAY else None)
        w.add_context_length(2048), w.add_embedding_length(d), w.add_block_count(layers)
        w.add_feed_forward_length(mlp), w.add_head_count(heads), w.add_head_count_kv(kv)
        w.add_layer_norm_rms_eps(1e-5), w.add_rope_freq_base(500000.0), w.add_vocab_size(vocab)
        w.add_rope_dimension_count(d // heads)

    def tensors():
        yield "token_embd.weight", random_blocks(mix_type(mix, "token_embd.weight", d, layers), vocab, d, rng), \
            mix_type(mix, "token_embd.weight", d, layers)
        yield "output_norm.weight", np.ones(d, np.float32), None
        shapes = {"attn_q": (d, d), "attn_k": (kv * d // heads, d), "attn_v": (kv * d // heads, d),
                  "attn_output": (d, d), "ffn_gate": (mlp, d), "ffn_up": (mlp, d), "ffn_down": (d, mlp)}
        for layer in range(layers):
            for norm in ("attn_norm", "ffn_norm"):
                yield f"blk.{layer}.{norm}.weight", np.ones(d, np.float32), None
            for part, (rows, k) in shapes.items():
                name = f"blk.{layer}.{part}.weight"
                qtype = mix_type(mix, name, k, layers)
                yield name, random_blocks(qtype, rows, k, rng), qtype

    write(out, "llama", metadata, tensors())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--llama-1b", action="store_true", help="the four mixes at the 1B shape (as --llama 1b)")
    parser.add_argument("--llama", default="", help="shapes, comma-separated: 1b, 3b, 8b")
    parser.add_argument("--mixes", default="q4_k_m,q6_k,q8_0,q4_1", help="with --llama: which mixes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for mix in ("q5_0", "q5_1", "q4_k_m", "q5_k_m", "q6_k"):
        from_default(mix, args.out / f"{mix}.gguf")
    from_default("q4_k_m", args.out / "q4_k_m-q8_0.gguf", requantize=True)
    sizes = ["1b"] * args.llama_1b + [size for size in args.llama.split(",") if size]
    for size in dict.fromkeys(sizes):
        for mix in args.mixes.split(",") if args.llama else ("q4_k_m", "q6_k", "q8_0", "q4_1"):
            llama_shape(size, mix, args.out / f"llama-{size}-{mix}.gguf")


if __name__ == "__main__":
    main()
