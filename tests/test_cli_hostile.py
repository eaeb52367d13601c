"""Bad options, bad files and a hostile environment: one line on stderr, a documented exit code.

In-process (lmgen.cli.main.run) except where a real process is the point.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import assert_one_line_error, run_lmgen


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--seed", str(2**64)], r"seed must be from 0 to 2\*\*64 - 1"),
        (["--seed", "-1"], r"seed must be from 0"),
        (["--show-probs", "1000000"], r"show-probs must be at most the vocabulary size \(300\)"),
        (["--frequency-penalty", "inf"], "frequency-penalty must be a finite number"),
        (["--presence-penalty", "nan"], "presence-penalty must be a finite number"),
        (["--temperature", "inf"], "temperature must be a finite number"),
        (["--stop", ""], "--stop string must not be empty"),
        (["--threads", "0"], "threads must be from 1 to"),
        (["--threads", "99999999999999999999"], "threads must be from 1 to"),  # found by the CLI fuzzer
        (["--logit-bias", "5"], "logit-bias must be ID=BIAS, a token id and a number from -100 to 100, got '5'"),
        (["--logit-bias", "x=1"], "logit-bias must be ID=BIAS"), (["--logit-bias", "5=abc"], "logit-bias must be ID=BIAS"),
        (["--logit-bias", "=5"], "logit-bias must be ID=BIAS"), (["--logit-bias", "9" * 5000 + "=1"], "must be ID=BIAS"),
        (["--logit-bias", "5=101"], "logit-bias of token 5 must be a number from -100 to 100, got 101"),
        (["--logit-bias", "5=-inf"], "logit-bias of token 5 must be a number from -100 to 100"),
        (["--logit-bias", "5=nan"], "logit-bias of token 5 must be a number"),
        (["--logit-bias", "-1=5"], "logit-bias token ids must be integers >= 0, got -1"),
        (["--logit-bias", "300=-100"], r"logit-bias token id 300 is not in the model's vocabulary \(0 to 299\)"),
        (["--logit-bias", "5=1", "--logit-bias", "5=2"], "logit-bias gives token 5 more than one bias"),
        ([arg for i in range(1025) for arg in ("--logit-bias", f"{i}=1")], "logit-bias may hold at most 1024 tokens"),
    ],
)
def test_bad_option_values(cli, tiny_dir, args, pattern):
    assert_one_line_error(cli("generate", "-m", str(tiny_dir), *args, "hi"), 2, pattern)


@pytest.mark.parametrize("args", [["generate", "--each-line"], ["chat"]])
def test_a_logit_bias_id_beyond_the_vocabulary_is_refused_by_every_command(cli, tiny_chat_dir, args):
    result = cli(*args, "-m", str(tiny_chat_dir), "--logit-bias", "299=1", "--logit-bias", "300=1", input=b"hi\n")
    assert_one_line_error(result, 2, r"logit-bias token id 300 is not in the model's vocabulary \(0 to 299\)")


@pytest.mark.parametrize(
    "args, pattern",
    [(["--window", "0"], "window must be >= 2"), (["--stride", "0"], "stride must be between 1 and"),
     (["--window", "8", "--stride", "8"], "stride must be between 1 and")],
)
def test_bad_score_windows(cli, tiny_dir, args, pattern):
    assert_one_line_error(cli("score", "-m", str(tiny_dir), *args, "The cat sat on the mat"), 2, pattern)


def test_prompt_larger_than_the_context_could_use_is_refused_unread(cli, tiny_dir):
    # the tiny model's context is 128 tokens: 128 × 256 bytes is the most a prompt could use
    result = cli("generate", "-m", str(tiny_dir), "-n", "2", input=b"x" * (128 * 256 + 1))
    assert_one_line_error(result, 2, r"stdin is longer than the context could use \(32,768 bytes\).*--truncate")


def test_file_dev_zero_is_refused(cli, tiny_dir):
    assert_one_line_error(cli("generate", "-m", str(tiny_dir), "--file", "/dev/zero"), 2,
                          r"--file /dev/zero is longer than the context could use")


def test_truncate_keeps_the_end_of_a_huge_prompt(cli, tiny_dir):
    result = cli("generate", "-m", str(tiny_dir), "-n", "2", "--truncate", "--json", input=b"ab" * 100_000 + b"END")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["prompt"].endswith("abEND") and len(record["prompt"].encode()) <= 128 * 256


def test_truncate_of_an_endless_stream_gives_up(cli, tiny_dir, monkeypatch):
    from lmgen.cli import prompts

    monkeypatch.setattr(prompts, "MAX_STREAM_BYTES", 1 << 20)
    result = cli("generate", "-m", str(tiny_dir), "--truncate", "--file", "/dev/zero")
    assert_one_line_error(result, 2, "even for --truncate")


def test_each_line_refuses_an_overlong_line(cli, tiny_dir):
    result = cli("generate", "-m", str(tiny_dir), "-n", "1", "--each-line", input=b"hi\n" + b"y" * 40_000 + b"\n")
    assert result.returncode == 2 and b"stdin line 2 is longer than the context" in result.stderr


def damaged_weights(tiny_dir, tmp_path, change=lambda state: state["model.layers.0.mlp.down_proj.weight"].__setitem__((3, 5), float("nan"))):
    """A copy of the tiny model with change(state) made to its weights (by default one NaN)."""
    from safetensors.torch import load_file, save_file

    path = shutil.copytree(tiny_dir, tmp_path / "damaged")
    state = load_file(path / "model.safetensors")
    change(state)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return path


def nan_weights(tiny_dir, tmp_path):
    return damaged_weights(tiny_dir, tmp_path)


@pytest.mark.parametrize("mode", [[], ["--json"], ["--jsonl"]])
def test_nan_weights_print_no_text(cli, tiny_dir, tmp_path, mode):
    result = cli("generate", "-m", str(nan_weights(tiny_dir, tmp_path)), "-n", "4", *mode, "The cat")
    assert_one_line_error(result, 3, "NaN or infinite logits")


def test_nan_weights_in_score(cli, tiny_dir, tmp_path):
    result = cli("score", "-m", str(nan_weights(tiny_dir, tmp_path)), "The cat sat")
    assert_one_line_error(result, 3, "NaN or infinite logits")


def scaled(name: str, factor: float):
    def change(state):
        state[name] *= factor
    return change


DEGENERATE = {  # finite weights whose logits no trained model gives: refused as NaN ones are
    "every logit the same": (scaled("model.norm.weight", 0.0), "the same logit"),
    "logits beyond 1e4": (scaled("model.norm.weight", 1e7), "beyond what a trained model reaches"),
}


@pytest.mark.parametrize("command", ["generate", "score"])
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_finite_logits_print_no_text(cli, tiny_dir, tmp_path, case, command):
    change, message = DEGENERATE[case]
    args = ["-n", "4", "The cat"] if command == "generate" else ["The cat sat"]
    result = cli(command, "-m", str(damaged_weights(tiny_dir, tmp_path, change)), *args)
    assert_one_line_error(result, 3, message)
    assert not result.stdout


def test_tokenizer_id_beyond_the_vocabulary(cli, tiny_dir, tmp_path):
    path = shutil.copytree(tiny_dir, tmp_path / "tok")
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["h"] = 5000  # the byte token for "h" gets an id past the embedding's 300 rows
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    result = cli("generate", "-m", str(path), "-n", "2", "hhhh")
    assert_one_line_error(result, 3, r"token id 5000, beyond the model's vocabulary of 300")


def sharded(tiny_dir, tmp_path, shard_name):
    path = shutil.copytree(tiny_dir, tmp_path / "sharded")
    weights = path / "model.safetensors"
    names = json.loads(weights.read_bytes()[8 : 8 + int.from_bytes(weights.read_bytes()[:8], "little")])
    weights.rename(path / "model-00001-of-00001.safetensors")
    index = {"weight_map": {n: "model-00001-of-00001.safetensors" for n in names if n != "__metadata__"}}
    index["weight_map"]["lm_head.weight"] = shard_name
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


@pytest.mark.parametrize("shard", ["../other/model.safetensors", "/etc/passwd", "sub/model.safetensors", ".."])
def test_shard_index_pointing_outside_the_model_is_refused(cli, tiny_dir, tmp_path, shard):
    result = cli("generate", "-m", str(sharded(tiny_dir, tmp_path, shard)), "-n", "2", "hi")
    assert_one_line_error(result, 3, "shards must be files in the model's directory")


def test_shard_index_weight_map_a_list(cli, tiny_dir, tmp_path):
    path = sharded(tiny_dir, tmp_path, "model-00001-of-00001.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a", "b"]}))
    assert_one_line_error(cli("generate", "-m", str(path), "hi"), 3, "weight_map must be an object")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_fifo_in_place_of_a_checkpoint_file_is_refused(lmgen_exe, tiny_dir, tmp_path, name):
    path = shutil.copytree(tiny_dir, tmp_path / "fifo")
    (path / name).unlink()
    os.mkfifo(path / name)
    result = run_lmgen(lmgen_exe, "generate", "-m", str(path), "-n", "2", "hi", timeout=60)
    assert_one_line_error(result, 3, rf"{name} is not a regular file")


def test_inspect_of_a_fifo_does_not_block(lmgen_exe, tmp_path):
    os.mkfifo(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    result = run_lmgen(lmgen_exe, "inspect", str(tmp_path / "model.safetensors"), timeout=60)
    assert result.returncode in (2, 3) and b"Traceback" not in result.stderr


def test_device_file_as_weights_is_refused(cli, tiny_dir, tmp_path):
    path = shutil.copytree(tiny_dir, tmp_path / "dev")
    (path / "model.safetensors").unlink()
    (path / "model.safetensors").symlink_to("/dev/zero")
    assert_one_line_error(cli("generate", "-m", str(path), "hi"), 3, "not a regular file")


def test_stdout_on_a_full_disk(lmgen_exe, tiny_dir):
    with open("/dev/full", "w") as full:
        result = subprocess.run([lmgen_exe, "generate", "-m", str(tiny_dir), "-n", "3", "hi"], stdout=full,
                                stderr=subprocess.PIPE, timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 4, err
    assert err.startswith("lmgen: error: No space left on device") and len(err.splitlines()) == 1


def test_setup_into_an_unwritable_home(lmgen_exe):
    result = run_lmgen(lmgen_exe, "setup", env={"LMGEN_HOME": "/proc/lmgen-home"})
    err = result.stderr.decode()
    assert result.returncode == 4, err
    assert err.startswith("lmgen: error: cannot write") and len(err.splitlines()) == 1


def test_each_line_truncate_keeps_the_end_of_an_overlong_line(cli, tiny_dir):
    stdin = b"ab" * 40_000 + b"END\nnext\n"
    result = cli("generate", "-m", str(tiny_dir), "-n", "1", "--each-line", "--truncate", "--jsonl", input=stdin)
    assert result.returncode == 0, result.stderr
    prompts = [json.loads(line)["prompt"] for line in result.stdout.decode().splitlines()]
    assert len(prompts) == 2 and prompts[0].endswith("abEND") and prompts[1] == "next"
    assert len(prompts[0].encode()) <= 128 * 256


@pytest.mark.parametrize("line", ['{"prompt": "\\ud800"}', '{"prompt": "hi", "system": "\\udfff"}',
                                  '{"id": "\\ud800", "prompt": "hi"}',
                                  '{"prompt": [{"role": "user", "content": "\\ud800"}]}',
                                  "[" * 100_000 + "]" * 100_000])
def test_batch_refuses_a_line_no_text_can_hold_before_dir_is_made(cli, tiny_dir, tmp_path, line):
    """A lone surrogate escape or a record nested 100,000 deep on line 2: exit 2 naming the
    file and line, before DIR exists (so line 1's work is never half-written)."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "fine"}\n' + line + "\n")
    result = cli("batch", str(source), "--out", str(tmp_path / "out"), "-m", str(tiny_dir), "-n", "2")
    assert_one_line_error(result, 2, r"in\.jsonl:2")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("schema", ['{"const": "\\ud800"}', '{"properties": {"\\udc00": {}}}',
                                    '{"enum": ["ok", "\\udbff"]}'])
def test_a_schema_holding_a_lone_surrogate_is_refused(cli, tiny_dir, schema):
    result = cli("generate", "-m", str(tiny_dir), "-n", "2", "--json-schema", schema, "hi")
    assert_one_line_error(result, 2, "--json-schema holds a string that is not valid UTF-8")


@pytest.mark.parametrize("name, line", [("in.jsonl", '{"prompt": "' + "a" * 300_000 + '"}'), ("in.txt", "a" * 40_000)])
def test_a_batch_line_no_prompt_could_use_is_refused_as_it_is_read(cli, tiny_dir, tmp_path, name, line):
    """One bound for a line (max_line_bytes, from the context: 128 tokens here), checked while the
    file is read — before DIR is made, never tokenized; --truncate reads it to keep its end."""
    source, out = tmp_path / name, tmp_path / "out"
    source.write_text('{"prompt": "fine"}\n' + line + "\n" if name.endswith("jsonl") else "fine\n" + line + "\n")
    result = cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2")
    assert_one_line_error(result, 2, rf"{name}:2 is longer than a prompt the model's context could use")
    assert not out.exists()
    kept = cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2", "--truncate")
    assert kept.returncode == 0, kept.stderr.decode()


def test_a_kv_cache_dtype_is_checked_and_a_bf16_cache_holds_half_a_q8_0_one_about_a_quarter(cli, tiny_dir):
    import lmgen

    assert_one_line_error(cli("generate", "-m", str(tiny_dir), "--kv-dtype", "int4", "hi"), 2,
                          r"unknown KV cache dtype 'int4' \(choose from float32, fp32, bfloat16, bf16, q8_0\)")
    for kv in ("bf16", "q8_0"):
        assert cli("generate", "-m", str(tiny_dir), "--kv-dtype", kv, "-n", "3", "hi").returncode == 0
    fp32, bf16, q8 = (lmgen.load(tiny_dir, kv_dtype=kv).model.new_cache(batch=2, max_len=64)
                      for kv in ("fp32", "bf16", "q8_0"))
    assert bf16.k.dtype == bf16.v.dtype == torch.bfloat16 and 2 * bf16.k.nbytes == fp32.k.nbytes
    assert q8.k.dtype == torch.int8 and 4 * q8.k.nbytes == fp32.k.nbytes
    block = q8.q8_block  # an fp32 scale per 32 values (per head here: the tiny model's are 16 wide)
    assert block == (32 if fp32.k.shape[-1] % 32 == 0 else fp32.k.shape[-1]) and q8.k_scale.nbytes * block == q8.k.nbytes * 4
    assert q8.page_bytes() * 4 == fp32.page_bytes() * (1 + 4 / block)
