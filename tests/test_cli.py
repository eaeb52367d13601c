"""The real `lmgen` entry point, run in subprocesses."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ANSI, assert_one_line_error, run_lmgen, run_on_a_terminal


def test_generate_with_the_real_model(lmgen_exe, smollm2_dir):
    result = run_lmgen(lmgen_exe, "generate", "The capital of France is", "-n", "6", "--stats",
                       env={"LMGEN_MODEL": str(smollm2_dir)})
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith(" Paris")
    assert not ANSI.search(result.stdout)
    assert re.search(r"decode [\d.]+ tokens/s", result.stderr.decode())


def test_setup_installs_the_default_model_then_generate_uses_it(lmgen_exe, tmp_path):
    env = {"LMGEN_HOME": str(tmp_path), "LMGEN_MODEL": ""}
    missing = run_lmgen(lmgen_exe, "generate", "Hello", env=env)
    assert_one_line_error(missing, 3, r"lmgen setup")
    shown, _ = run_on_a_terminal(lmgen_exe, ["setup"], {**env, "TERM": "xterm-256color"}, "stderr")
    assert b"expanding it to fp32 for --dtype (3/3)" in shown  # ~8 s of work is never silent on a terminal
    assert b"installed the default model at" in shown
    root = tmp_path / "SmolLM2-135M-Instruct"
    assert [p.name for p in root.iterdir()] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]  # one name, one model
    assert len(list((tmp_path / "gguf").glob("*-fp32/model.safetensors"))) == 1  # its expansion, for --dtype
    result = run_lmgen(lmgen_exe, "generate", "--echo", "-n", "5", "The capital of France is", env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith("The capital of France is Paris")
    # the directory setup reports runs the same weights as no --model; --dtype float32 the expansion
    records = {}
    for name, args in {"default": [], "dir": ["-m", str(root)], "fp32": ["--dtype", "float32"]}.items():
        out = run_lmgen(lmgen_exe, "generate", "-n", "4", "--json", "The cat", *args, env=env)
        records[name] = json.loads(out.stdout)
    assert records["default"]["token_ids"] == records["dir"]["token_ids"]
    assert records["default"]["weights_gb_per_s"] / records["default"]["decode_tokens_per_s"] < \
        records["fp32"]["weights_gb_per_s"] / records["fp32"]["decode_tokens_per_s"] / 4  # bytes read per token


def test_prompt_from_stdin(cli, tiny_dir):
    piped = cli("generate", "-m", str(tiny_dir), "-n", "5", input=b"The cat sat\n")
    argued = cli("generate", "-m", str(tiny_dir), "-n", "5", "The cat sat")
    assert piped.returncode == 0, piped.stderr.decode()
    assert piped.stdout == argued.stdout and piped.stdout


def test_inspect_and_help_do_not_import_torch(smollm2_dir):
    code = (
        "import sys\nfrom lmgen.cli.app import app\n"
        "for args in (['--help'], ['inspect', sys.argv[1]]):\n"
        "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(smollm2_dir)], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_shape_mismatch_fails_naming_the_tensor(cli, tiny_dir, tmp_path):
    import shutil

    bad = shutil.copytree(tiny_dir, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["vocab_size"] = 320
    (bad / "config.json").write_text(json.dumps(config))
    result = cli("generate", "-m", str(bad), "hello")
    assert_one_line_error(result, 3, r"tensor (model\.embed_tokens|lm_head)\.weight .*\(300, 64\).*\(320, 64\)")


def test_convert_refuses_a_non_gguf_file(lmgen_exe, tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("hello")
    assert_one_line_error(run_lmgen(lmgen_exe, "convert", str(bad), str(tmp_path / "o")), 3, "GGUF")


def test_invalid_sampling_value_is_one_line(cli, tiny_dir):
    result = cli("generate", "-m", str(tiny_dir), "--top-p", "1.5", "hi")
    assert_one_line_error(result, 2, "top-p")


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "lmgen", "--help"], capture_output=True)
    assert result.returncode == 0 and b"generate" in result.stdout


def test_seeded_sampling_through_the_cli_repeats(cli, tiny_dir):
    args = ["generate", "-m", str(tiny_dir), "-n", "12", "-t", "0.9", "--top-k", "50", "--min-p", "0.01",
            "--repetition-penalty", "1.1", "--seed", "11", "Once"]
    first, second = cli(*args), cli(*args)
    assert first.returncode == 0, first.stderr.decode()
    assert first.stdout == second.stdout and first.stdout.strip()


def test_logit_bias_through_the_cli_forces_and_bans_tokens(cli, tiny_dir):
    def token_ids(*args):
        result = cli("generate", "-m", str(tiny_dir), "-n", "6", "--json", *args, "Hi")
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)["token_ids"]

    assert token_ids("--logit-bias", "65=100") == [65] * 6  # greedy picks it at every step
    plain = token_ids()
    banned = [arg for token in set(plain) for arg in ("--logit-bias", f"{token}=-100")]
    assert not set(plain) & set(token_ids(*banned))
    assert not set(plain) & set(token_ids("-t", "1", "--seed", "5", *banned))  # sampled too


def test_stop_string_through_the_cli(cli, tiny_dir):
    full = json.loads(cli("generate", "-m", str(tiny_dir), "-n", "30", "--json", "Hi").stdout)
    stop = full["text"][6:9]
    result = cli("generate", "-m", str(tiny_dir), "-n", "30", "--json", "--stop", "zzzz",
                       "--stop", stop, "Hi")
    record = json.loads(result.stdout)
    assert record["finish_reason"] == "stop"
    assert record["text"] == full["text"][: full["text"].index(stop)]


def test_num_samples_as_json_lines(cli, tiny_dir):
    result = cli("generate", "-m", str(tiny_dir), "-n", "8", "-t", "1", "--seed", "3",  # no sample draws EOS
                       "--num-samples", "3", "--json", "Once")
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["sample"] for r in records] == [0, 1, 2]
    assert all(r["new_tokens"] == 8 for r in records)
    text = cli("generate", "-m", str(tiny_dir), "-n", "8", "-t", "1", "--seed", "3",
                     "--num-samples", "3", "Once")
    assert text.stdout.decode() == "".join(r["text"] + "\n" for r in records)


def test_show_probs_fields_and_stderr_lines(cli, tiny_dir):
    result = cli("generate", "-m", str(tiny_dir), "-n", "3", "--show-probs", "4", "--jsonl", "Hi")
    tokens = [json.loads(line) for line in result.stdout.decode().splitlines()][:3]
    for token in tokens:
        assert len(token["top"]) == 4 and 0 < token["prob"] <= 1
        assert token["top"][0]["prob"] >= token["top"][-1]["prob"]
        assert token["top"][0]["id"] == token["id"]  # greedy chose the most likely
    text = cli("generate", "-m", str(tiny_dir), "-n", "3", "--show-probs", "2", "Hi")
    lines = text.stderr.decode().splitlines()
    assert len(lines) == 3 and all(re.match(r"\s*[01]\.\d{3} ", line) for line in lines)


@pytest.mark.parametrize("args, pattern", [
    (["--min-p", "2"], "min-p must be in"),
    (["--typical-p", "0"], "typical-p must be in"),
    (["--repetition-penalty", "0"], "repetition-penalty must be > 0"),
    (["--num-samples", "0"], "num-samples must be from 1 to 65536"),
    (["--num-samples", "18446744073709551616"], "num-samples must be from 1 to 65536"),
    (["--system", "be nice"], "--system needs --chat"),
    (["--chat"], "no chat template"),
])
def test_bad_generation_controls(cli, tiny_dir, args, pattern):
    assert_one_line_error(cli("generate", "-m", str(tiny_dir), *args, "hi"), 2, pattern)


def test_each_line_with_several_samples_prints_each_prompts_own_text(cli, tiny_dir):
    """Line i's samples are seeded from --seed and i (README), so they equal that prompt run
    alone with its line's seed; records carry the line's index and each sample's number."""
    from lmgen.engine.batching import prompt_seed

    args = ["generate", "-m", str(tiny_dir), "-n", "6", "-t", "1", "--num-samples", "2"]
    alone = [
        json.loads(line)
        for i, prompt in enumerate(("Once", "The cat", "Up"))
        for line in cli(*args, "--json", "--seed", str(prompt_seed(4, i)), prompt).stdout.decode().splitlines()
    ]
    text = cli(*args, "--seed", "4", "--each-line", input=b"Once\nThe cat\nUp\n").stdout.decode()
    assert text == "".join(r["text"] + "\n" for r in alone)
    records = [json.loads(line) for line in
               cli(*args, "--seed", "4", "--each-line", "--json", input=b"Once\nThe cat\nUp\n").stdout.splitlines()]
    assert [(r["index"], r["sample"]) for r in records] == [(i, s) for i in range(3) for s in range(2)]
    assert [r["text"] for r in records] == [r["text"] for r in alone]


def test_each_line_prints_one_line_per_prompt_even_when_empty(cli, smollm2_dir):
    stdin = b"The capital of France is\nThe cat sat\nThe capital of France is\n"
    args = ["generate", "-m", str(smollm2_dir), "--each-line", "-n", "3", "--stop", " Paris"]
    text = cli(*args, input=stdin)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.decode().split("\n")
    assert len(lines) == 4 and lines[-1] == "", lines  # three lines, each ended by a newline
    assert lines[0] == lines[2] == ""  # " Paris" stops the completion before any text
    assert lines[1]
    records = [json.loads(line) for line in cli(*args, "--json", input=stdin).stdout.decode().splitlines()]
    assert [r["text"] for r in records] == ["", lines[1], ""]


def test_each_line_keeps_line_breaks_of_a_completion_on_its_line(cli, smollm2_dir):
    stdin = b"Write a haiku about the sea.\n"
    args = ["generate", "-m", str(smollm2_dir), "-n", "24", "--chat"]
    record = json.loads(cli(*args, "--json", "Write a haiku about the sea.").stdout)
    assert "\n" in record["text"]  # the model breaks its lines
    text = cli(*args, "--each-line", input=stdin).stdout.decode()
    assert text.count("\n") == 1
    expected = record["text"].replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    assert text == expected + "\n"


def test_generate_with_a_single_empty_completion_still_ends_its_line(cli, smollm2_dir):
    result = cli("generate", "-m", str(smollm2_dir), "-n", "3", "--stop", " Paris", "The capital of France is")
    assert result.returncode == 0 and result.stdout == b"\n"


# ------------------------------------------- every prompt, one record; bad input is one line, never exit 1


def test_each_line_answers_every_prompt_when_each_ends_at_its_first_token(cli, tiny_dir):
    """The engine once returned when no row was in flight after a step's joins: with -n 1 only
    the first batch of prompts was answered (8 lines for 20, exit 0)."""
    stdin = "".join(f"Line {i} is\n" for i in range(20)).encode()
    for batch_size in ("1", "3", "8"):
        result = cli("generate", "-m", str(tiny_dir), "--each-line", "-n", "1", "--batch-size", batch_size, "--json",
                     input=stdin)
        assert result.returncode == 0, result.stderr
        assert [json.loads(line)["prompt"] for line in result.stdout.splitlines()] == [f"Line {i} is" for i in range(20)]


@pytest.mark.parametrize("batch_size", ["1", "8"])
def test_each_line_prints_every_prompt_before_a_bad_line_then_names_it(cli, tiny_dir, batch_size):
    stdin = b"one\ntwo\n\nthree\n\xff bad\nfour\n"
    result = cli("generate", "-m", str(tiny_dir), "--each-line", "-n", "3", "--batch-size", batch_size, "--json",
                 input=stdin)
    assert result.returncode == 2
    assert [json.loads(line)["prompt"] for line in result.stdout.splitlines()] == ["one", "two", "three"]
    assert result.stderr.decode() == "lmgen: error: stdin line 5 is not valid UTF-8 (byte 0: 0xff)\n"
    long = b"one\n" + b"word " * 200 + b"\nthree\n"  # too long for the tiny model's context: line 2
    result = cli("generate", "-m", str(tiny_dir), "--each-line", "-n", "3", "--batch-size", batch_size, input=long)
    assert result.returncode == 2 and result.stdout.count(b"\n") == 1
    assert re.fullmatch(r"lmgen: error: stdin line 2: the prompt has \d+ tokens .*\n", result.stderr.decode())


@pytest.mark.parametrize("args, pattern", [
    (["--frequency-penalty", "1e39"], "frequency-penalty must be from"),
    (["--presence-penalty", "1e39"], "presence-penalty must be from"),
    (["--presence-penalty", "-1e39"], "presence-penalty must be from"),
    (["-t", "1e-40"], r"temperature must be 0 \(greedy\) or from"),
    (["--repetition-penalty", "1e-45"], "repetition-penalty must be from"),
])
def test_sampling_values_that_could_overflow_are_refused(cli, tiny_dir, args, pattern):
    assert_one_line_error(cli("generate", "-m", str(tiny_dir), "-n", "2", *args, "Hello"), 2, pattern)


def test_non_utf8_arguments_are_one_line(tiny_dir, lmgen_exe):
    """argv bytes that are not UTF-8 reach Python as lone surrogates, which the tokenizer refuses."""
    for command in ("generate", "score"):
        result = subprocess.run([lmgen_exe, command, "-m", str(tiny_dir), b"caf\xe9"], capture_output=True)
        assert_one_line_error(result, 2, "the prompt argument is not valid UTF-8")


def test_a_closed_stdout_is_one_line_and_exit_4(tiny_dir, lmgen_exe):
    for args in (["generate", "-n", "2", "Hello"], ["score", "Hello there"]):
        result = subprocess.run([lmgen_exe, args[0], "-m", str(tiny_dir), *args[1:]], capture_output=False,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True,
                                preexec_fn=lambda: __import__("os").close(1))
        assert result.returncode == 4, result.stderr
        assert result.stderr.decode() == "lmgen: error: cannot write to standard output: it is closed\n"


def test_a_byte_order_mark_is_not_part_of_a_prompt(cli, tiny_dir):
    plain = cli("generate", "-m", str(tiny_dir), "-n", "3", "--json", input=b"Hello\n")
    marked = cli("generate", "-m", str(tiny_dir), "-n", "3", "--json", input=b"\xef\xbb\xbfHello\n")
    assert json.loads(marked.stdout)["prompt"] == "Hello"
    assert json.loads(marked.stdout)["token_ids"] == json.loads(plain.stdout)["token_ids"]
    lines = cli("generate", "-m", str(tiny_dir), "-n", "3", "--json", "--each-line", input=b"\xef\xbb\xbfHello\n")
    assert json.loads(lines.stdout)["prompt"] == "Hello"


def test_truncate_drops_a_split_character_only_where_it_cut(cli, tiny_dir):
    """A line that begins with a stray continuation byte is not UTF-8, with --truncate or not."""
    result = cli("generate", "-m", str(tiny_dir), "-n", "2", "--each-line", "--truncate", input=b"ok\n\x80bad\n")
    assert result.returncode == 2 and b"stdin line 2 is not valid UTF-8" in result.stderr


def test_help_names_every_family_and_gguf_files(cli):
    from lmgen.config.model_config import FAMILIES

    text = re.sub(r"\s+", " ", cli("--help").stdout.decode())
    assert all(family in text for family in FAMILIES)
    model_help = re.sub(r"[\s│]+", " ", cli("generate", "--help").stdout.decode())
    assert "Checkpoint directory, GGUF file or Hub name" in model_help


def test_every_samples_time_to_first_token_includes_the_shared_prefill(cli, smollm2_dir):
    """Later samples copy the first one's prompt cache: their time to first token once left out
    the prefill (8e-05 s, 49,000 prompt tokens/s)."""
    prompt = "The history of the city of Paris, from its founding to the present day, in many words: " * 6
    result = cli("generate", "-m", str(smollm2_dir), "-n", "2", "-t", "1", "--seed", "1", "--num-samples", "3",
                 "--json", prompt)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    first = records[0]["time_to_first_token_s"]
    assert all(r["time_to_first_token_s"] >= first for r in records[1:])
    assert all(r["prefill_tokens_per_s"] <= records[0]["prefill_tokens_per_s"] for r in records[1:])


def test_index_is_the_input_line_and_blank_lines_are_skipped(cli, tiny_dir, tmp_path):
    """README: `index` is the prompt's 0-based line; a blank line gets no output and shifts
    nothing (not the next prompt's index, nor its seed); batch's records agree."""
    args = ["generate", "-m", str(tiny_dir), "-n", "3", "-t", "1", "--seed", "5", "--each-line", "--json"]
    spaced = [json.loads(line) for line in cli(*args, input=b"one\n\n  \ntwo\nthree\n").stdout.splitlines()]
    assert [(r["index"], r["prompt"]) for r in spaced] == [(0, "one"), (3, "two"), (4, "three")]
    src = tmp_path / "in.txt"
    src.write_text("one\n\n  \ntwo\nthree\n")
    assert cli("batch", str(src), "--out", str(tmp_path / "out"), *args[1:-2]).returncode == 0
    batch = [json.loads(line) for line in next((tmp_path / "out").glob("part-*")).read_text().splitlines()]
    assert [(r["id"], r["index"], r["text"]) for r in batch] == [(i + 1, i, r["text"]) for i, r in
                                                                  zip((0, 3, 4), spaced)]


def test_the_prompt_field_is_the_users_text_with_chat(cli, smollm2_dir, tmp_path):
    result = cli("generate", "-m", str(smollm2_dir), "-n", "2", "--chat", "--system", "Be brief.", "--json", "Hi!")
    record = json.loads(result.stdout)
    assert record["prompt"] == "Hi!"
    assert record["rendered_prompt"].startswith("<|im_start|>system\nBe brief.")
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "prompt": "Hi!", "system": "Be brief."}\n')
    assert cli("batch", str(src), "--out", str(tmp_path / "out"), "-m", str(smollm2_dir), "-n", "2").returncode == 0
    batch = json.loads(next((tmp_path / "out").glob("part-*")).read_text())
    assert batch["prompt"] == "Hi!" and batch["rendered_prompt"] == record["rendered_prompt"]
    assert batch["text"] == record["text"]


def test_version_and_a_help_list_with_one_sentence_per_command(cli):
    from importlib.metadata import version

    assert cli("--version").stdout.decode() == f"lmgen {version('lmgen')}\n"
    wide = subprocess.run([sys.executable, "-m", "lmgen", "--help"], capture_output=True, env={**os.environ,
                          "COLUMNS": "300", "NO_COLOR": "1"}, check=True).stdout.decode()
    rows = [line.strip("│ ").split(None, 1) for line in wide.split("Commands")[1].splitlines() if line.startswith("│")]
    import typer.main

    from lmgen.cli.main import app

    assert len(rows) == len(typer.main.get_command(app).commands)  # each command on one row
    assert all(len(row) == 2 and row[1].endswith(".") for row in rows), rows  # one sentence each


def test_lmgen_alone_prints_the_help_and_exits_0(cli):
    result = cli()
    assert result.returncode == 0 and "Usage: lmgen" in result.stdout.decode() and not result.stderr


def test_commands_are_listed_alphabetically(cli):
    import typer.main

    from lmgen.cli.main import app

    text = cli("--help").stdout.decode()
    names = list(typer.main.get_command(app).commands)
    listed = sorted(names, key=lambda name: text.index(f"│ {name} "))
    assert listed == sorted(names)


def test_usage_lines_show_argument_names_in_capitals(cli):
    """Every command's usage line: after [OPTIONS], argument names in capitals ({NAME} required, [NAME] not)."""
    import typer.main

    from lmgen.cli.main import app

    for name, command in typer.main.get_command(app).commands.items():
        shown = cli(name, "--help")
        assert shown.returncode == 0 and not shown.stderr, (name, shown.stderr)  # the whole help renders
        usage = re.search(r"Usage: lmgen (\S+) \[OPTIONS\](.*)", shown.stdout.decode())
        assert usage and usage.group(1) == name
        arguments = usage.group(2).split()
        assert len(arguments) == sum(p.param_type_name == "argument" for p in command.params)
        assert all(re.fullmatch(r"[\[{][A-Z_]+[\]}](\.\.\.)?", a) for a in arguments), (name, arguments)  # ...: many


def flat_help(cli, *args) -> str:
    return re.sub(r"[\s│]+", " ", cli(*args, "--help").stdout.decode())


def test_dtype_help_lists_every_accepted_value(cli):
    from lmgen.engine.load import DTYPES, QUANTIZED

    for command in ("generate", "chat", "batch", "score", "serve"):
        text = flat_help(cli, command)
        listed = re.search(r"--dtype DTYPE Weights: (.*?); on the CPU", text).group(1)
        assert set(re.findall(r"\b[a-z0-9_]+\b", listed)) >= set(DTYPES) | set(QUANTIZED), (command, listed)


def test_convert_help_lists_every_architecture_it_reads(cli):
    from lmgen.formats.gguf.arch import ARCHS

    text = flat_help(cli, "convert")
    assert all(re.search(rf"\b{arch}\b", text) for arch in ARCHS)
