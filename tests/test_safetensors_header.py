"""The safetensors header check refuses what the safetensors library refuses, and accepts what it accepts."""

import json
import random
import struct

import pytest
from test_fuzz import mutate_json

from lmgen.errors import CheckpointError
from lmgen.formats.safetensors_header import read_header

VALID = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
         "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]}}


def write(tmp_path, header, data: bytes = b"\0" * 32, name="x.safetensors"):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def library_accepts(path) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        safe_open(str(path), "numpy")
        return True
    except SafetensorError:
        return False


def lmgen_accepts(path) -> bool:
    try:
        read_header(path)
        return True
    except CheckpointError:
        return False


def entry(**change):
    return {"a": {**VALID["a"], **change}, "b": VALID["b"]}


def without(key):
    info = dict(VALID["a"])
    del info[key]
    return {"a": info, "b": VALID["b"]}


HOSTILE = {
    "no data_offsets": without("data_offsets"),
    "no shape": without("shape"),
    "no dtype": without("dtype"),
    "offsets strings": entry(data_offsets=["0", "24"]),
    "offsets negative": entry(data_offsets=[-24, 0]),
    "offsets too short": entry(data_offsets=[0]),
    "offsets null": entry(data_offsets=None),
    "offsets floats": entry(data_offsets=[0.0, 24.0]),
    "shape floats": entry(shape=[2.0, 3.0]),
    "shape null": entry(shape=None),
    "shape bools": entry(shape=[True, 3]),
    "shape too large": entry(shape=[2**40, 2**40]),
    "dtype list": entry(dtype=["F32"]),
    "dtype object": entry(dtype={"F32": 1}),
    "dtype unknown": entry(dtype="F99"),
    "header a list": [VALID],
    "header null": None,
    "header a number": 7,
    "aliasing": {"a": VALID["a"], "b": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}},
    "gap": {"a": VALID["a"], "b": {"dtype": "BF16", "shape": [4], "data_offsets": [26, 34]}},
    "beyond the data": entry(shape=[2, 30], data_offsets=[0, 240]),
    "metadata not strings": {**VALID, "__metadata__": {"format": 1}},
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_headers_are_refused_as_the_library_refuses_them(tmp_path, name):
    path = write(tmp_path, HOSTILE[name])
    with pytest.raises(CheckpointError, match="safetensors|truncated"):
        read_header(path)
    assert not library_accepts(path)


def test_valid_header_is_read(tmp_path):
    path = write(tmp_path, {**VALID, "__metadata__": {"format": "pt"}})
    header, start = read_header(path)
    assert header == VALID and library_accepts(path)
    assert start == 8 + len(json.dumps({**VALID, "__metadata__": {"format": "pt"}}).encode())


@pytest.mark.parametrize("raw", [b"", b"\x01\x02", struct.pack("<Q", 10**12), struct.pack("<Q", 50) + b"{}"])
def test_broken_length_prefix(tmp_path, raw):
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_header(path)


def test_trailing_bytes_after_the_last_tensor_are_refused(tmp_path):
    path = write(tmp_path, VALID, b"\0" * 40)
    assert not lmgen_accepts(path) and not library_accepts(path)


def test_random_mutations_agree_with_the_library(tmp_path):
    rng = random.Random(7)
    disagreements = []
    for case in range(400):
        header = mutate_json(rng, json.loads(json.dumps(VALID)))
        raw = json.dumps(header).encode()
        if rng.random() < 0.3:  # or flip bytes of the JSON itself
            raw = bytearray(raw)
            raw[rng.randrange(len(raw))] = rng.randrange(256)
            raw = bytes(raw)
        path = write(tmp_path, raw, name=f"{case}.safetensors")
        if lmgen_accepts(path) != library_accepts(path):
            disagreements.append(raw[:200])
    assert not disagreements, disagreements[:5]


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os

    os.mkfifo(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_header(tmp_path / "model.safetensors")
