"""A GGUF file's tensor table and values are checked as llama.cpp checks them (formats/gguf/validate.py).

Each hostile file of the issue is refused by inspect, generate and convert alike: exit 3 and one
line naming the tensor. And for every type, the field checked is the one whose NaN or infinity
makes the gguf library's dequantization of that block non-finite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize
from test_gguf_fuzz import patched_at, tensor_table, tiny_gguf, tiny_metadata, tiny_tensors, with_offset, write_gguf  # noqa: F401

from lmgen.errors import CheckpointError
from lmgen.formats.gguf.metadata import open_gguf
from lmgen.formats.gguf.validate import FIELDS, check_finite

F16_NAN, F16_INF = b"\x01\x7e", b"\x00\x7c"


@pytest.fixture(scope="module")
def tiny_q8_gguf(tmp_path_factory) -> Path:
    tensors = {n: (a, GGMLQuantizationType.Q8_0 if a.ndim == 2 else t) for n, (a, t) in tiny_tensors().items()}
    return write_gguf(tmp_path_factory.mktemp("q8") / "q8.gguf", tiny_metadata(), tensors)


def moved(name: str, where):
    """A case: tensor ``name``'s offset set to where(table)."""
    return lambda data, table: with_offset(data, table, name, where(table))


def value(name: str, at: int, raw: bytes):
    """A case: bytes ``at`` into tensor ``name``'s data replaced by raw."""
    return lambda data, table: patched_at(data, table[name]["start"] + at, raw)


Q, O = "blk.0.attn_q.weight", "blk.0.attn_output.weight"
HOSTILE = {  # name → (file, change, what the one line must say)
    "offset 2**64-32": ("f32", moved("output_norm.weight", lambda t: 2**64 - 32),
                        r"output_norm\.weight .*data offset 18446744073709551584\) lies beyond the end"),
    "overlap": ("f32", moved(O, lambda t: t[Q]["offset"] + 64), rf"{Q} .*and {O} \(from \d+\) overlap"),
    "shared bytes": ("f32", moved(O, lambda t: t[Q]["offset"]), rf"{O} and {Q} both start .* share their bytes"),
    "misaligned": ("f32", moved("output_norm.weight", lambda t: t["output_norm.weight"]["offset"] + 1),
                   r"output_norm\.weight starts at data offset \d+, not a multiple of the file's alignment \(32\)"),
    "NaN scale in Q8_0": ("q8", value("blk.1.ffn_up.weight", 5 * 34, F16_NAN),
                          r"blk\.1\.ffn_up\.weight \(Q8_0\) has a NaN as scale d of block 5 of 256"),
    "Inf scale in Q8_0": ("q8", value("blk.1.ffn_up.weight", 0, F16_INF),
                          r"blk\.1\.ffn_up\.weight \(Q8_0\) has an infinity as scale d of block 0 of 256"),
    "NaN in F32": ("f32", value("blk.0.ffn_norm.weight", 4 * 7, np.float32("nan").tobytes()),
                   r"blk\.0\.ffn_norm\.weight \(F32\) holds a NaN \(value 7 of 64\)"),
    "-Inf in F32": ("f32", value("output.weight", 4 * 100, np.float32("-inf").tobytes()),
                    r"output\.weight \(F32\) holds an infinity \(value 100 of 19200\)"),
}
COMMANDS = {
    "inspect": lambda path, out: ["inspect", str(path)],
    "generate": lambda path, out: ["generate", "-m", str(path), "-n", "2", "hello"],
    "convert": lambda path, out: ["convert", str(path), str(out)],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_gguf_file_is_one_line_and_exit_3(tiny_gguf, tiny_q8_gguf, cli, monkeypatch, tmp_path, case, command):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    kind, change, pattern = HOSTILE[case]
    source = {"f32": tiny_gguf, "q8": tiny_q8_gguf}[kind]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(change(source.read_bytes(), tensor_table(source)))
    result = cli(*COMMANDS[command](path, tmp_path / "out"))
    assert_one_line_error(result, 3, pattern)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["Q8_0", "F32"])
def test_the_unchanged_files_are_accepted(tiny_gguf, tiny_q8_gguf, cli, monkeypatch, tmp_path, kind):
    monkeypatch.setenv("LMGEN_HOME", str(tmp_path / "home"))
    path = {"F32": tiny_gguf, "Q8_0": tiny_q8_gguf}[kind]
    for args in COMMANDS.values():
        result = cli(*args(path, tmp_path / "out"))
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------- each type's fields

BLOCKS = 6  # three rows of two blocks


def finite_bits(rng: np.random.Generator, field, count: int) -> np.ndarray:
    """count small finite values in the field's encoding, as its unsigned bits."""
    if field.dtype == "u1":  # E8M0: an exponent byte
        return rng.integers(100, 130, count).astype(np.uint8)
    x = rng.uniform(-1, 1, count)
    if field.exponent == 0x7F80:  # BF16: the top half of an fp32
        return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return x.astype({"<u2": np.float16, "<u4": np.float32, "<u8": np.float64}[field.dtype]).view(field.dtype)


def put(blocks: np.ndarray, kind: str, field, block: slice | int, bits) -> None:
    """Write a field's bits into blocks (IQ1_M's scale spread over four nibbles, as ggml packs it)."""
    if kind == "IQ1_M":
        bits = np.asarray(bits, np.uint16)
        words = blocks[block, 48:56].view("<u2")
        for i in range(4):
            words[..., i] = (words[..., i] & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12)
        return
    width = np.dtype(field.dtype).itemsize
    blocks[block, field.offset : field.offset + width] = np.asarray(bits, field.dtype).reshape(-1, 1).view(np.uint8)


def fields_of(kind: str):
    from lmgen.formats.gguf.validate import _f16

    return FIELDS.get(kind, (_f16("d", 0),))  # IQ1_M: one fp16 scale, spread


def write_raw(path: Path, kind: str, blocks: np.ndarray) -> Path:
    writer = GGUFWriter(str(path), arch="llama")
    writer.add_tensor("blk.0.ffn_up.weight", blocks.reshape(3, -1), raw_dtype=GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def dequantized_finite(kind: str, blocks: np.ndarray) -> bool | None:
    """Whether gguf's dequantization of the blocks is finite (None: it cannot, or decodes
    MXFP4's NaN exponent 0xFF as a number, unlike ggml)."""
    if kind in ("F64", "Q8_K", "MXFP4"):
        return None
    with np.errstate(all="ignore"):  # NaN times a quant
        return bool(np.isfinite(dequantize(blocks.reshape(3, -1), GGMLQuantizationType[kind])).all())


@pytest.mark.parametrize("kind", [*FIELDS, "IQ1_M"])
def test_each_types_checked_fields_are_what_makes_its_weights_non_finite(kind, tmp_path):
    rng = np.random.default_rng(sum(map(ord, kind)))
    blocks = rng.integers(0, 256, (BLOCKS, GGML_QUANT_SIZES[GGMLQuantizationType[kind]][1]), dtype=np.uint8)
    for field in fields_of(kind):
        put(blocks, kind, field, slice(None), finite_bits(rng, field, BLOCKS))
    check_finite(open_gguf(write_raw(tmp_path / "ok.gguf", kind, blocks)))
    assert dequantized_finite(kind, blocks) in (True, None)
    for field in fields_of(kind):
        for bits, what in ((field.exponent | 1, "NaN"), (field.exponent, "infinity")):
            bad, block = blocks.copy(), int(rng.integers(BLOCKS))
            put(bad, kind, field, block, bits if kind != "MXFP4" else 0xFF)
            reader = open_gguf(write_raw(tmp_path / "bad.gguf", kind, bad))
            expected = "NaN" if kind == "MXFP4" else what
            with pytest.raises(CheckpointError, match=rf"blk\.0\.ffn_up\.weight \({kind}\) .*{expected}.* {block} of {BLOCKS}"):
                check_finite(reader)
            assert dequantized_finite(kind, bad) in (False, None)
