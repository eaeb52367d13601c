"""lmgen as a Unix citizen: stdin, pipes, JSON output, signals and one-line errors."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from conftest import ANSI, assert_one_line_error, interruptible, run_lmgen, run_on_a_terminal, save_tiny


def broken_copy(tiny_dir, tmp_path, what):
    path = shutil.copytree(tiny_dir, tmp_path / what)
    weights = path / "model.safetensors"
    if what == "no-config":
        (path / "config.json").unlink()
    elif what == "no-weights":
        weights.unlink()
    elif what == "no-tokenizer":
        (path / "tokenizer.json").unlink()
    elif what == "pickle":
        weights.unlink()
        (path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    elif what == "truncated":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif what == "corrupt":
        weights.write_bytes(b"\xff" * 64)
    elif what in ("shape", "model_type"):
        config = json.loads((path / "config.json").read_text())
        config.update({"shape": {"num_attention_heads": 2}, "model_type": {"model_type": "bert"}}[what])
        (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    "what, pattern",
    [
        ("no-config", r"no config\.json or config\.toml"),
        ("no-weights", r"no model\.safetensors"),
        ("no-tokenizer", r"no tokenizer\.json"),
        ("pickle", r"pytorch_model\.bin is a pickle checkpoint.*refuses"),
        ("truncated", r"not a readable safetensors|truncated"),
        ("corrupt", r"not a readable safetensors"),
        ("shape", r"tensor model\.layers\.0\.self_attn\.\w+\.weight .*has shape .* but the config implies"),
        ("model_type", r"model_type 'bert' is not supported \(supported: gpt2, llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, olmo2, smollm3\)"),
    ],
)
def test_bad_checkpoint_directories(cli, tiny_dir, tmp_path, what, pattern):
    path = broken_copy(tiny_dir, tmp_path, what)
    assert_one_line_error(cli("generate", "-m", str(path), "hello"), 3, pattern)


def test_missing_path(cli, tmp_path):
    result = cli("generate", "-m", str(tmp_path / "nowhere"), "hello")
    assert_one_line_error(result, 3, "does not exist")


def test_pickle_file_is_refused(cli, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04pickle")
    result = cli("generate", "-m", str(tmp_path / "model.pt"), "hello")
    assert_one_line_error(result, 3, "pickle checkpoint")


def test_tokenizer_larger_than_vocabulary(cli, tmp_path):
    save_tiny("llama", tmp_path, vocab_size=200, bos_token_id=1, eos_token_id=1)  # the byte tokenizer has 257 tokens
    result = cli("generate", "-m", str(tmp_path), "hello")
    assert_one_line_error(result, 3, "tokenizer has 257 tokens but the model's vocabulary has only 200")


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--temperature", "-0.5"], "temperature must be >= 0"),
        (["--top-p", "0"], r"top-p must be in \(0, 1\]"),
        (["--top-p", "1.5"], r"top-p must be in \(0, 1\]"),
        (["--top-k", "-1"], "top-k must be >= 0"),
        (["--max-new-tokens", "0"], "max-new-tokens must be >= 1"),
        (["--dtype", "int3"], "unknown dtype 'int3'"),
        (["--device", "tpu"], "device 'tpu'"),
        (["--top-k", "many"], "Invalid value for '--top-k'"),
        (["--no-such-flag"], "No such option: --no-such-flag"),
        (["--json", "--jsonl"], "choose one of --json and --jsonl"),
    ],
)
def test_bad_option_values(cli, tiny_dir, args, pattern):
    result = cli("generate", "-m", str(tiny_dir), *args, "hello")
    assert_one_line_error(result, 2, pattern)


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(cli, tiny_dir, prompt):
    assert_one_line_error(cli("generate", "-m", str(tiny_dir), prompt), 2, "prompt is empty")


def test_empty_stdin(cli, tiny_dir):
    assert_one_line_error(cli("generate", "-m", str(tiny_dir), input=b""), 2, "prompt is empty")


def test_non_utf8_stdin_and_file(cli, tiny_dir, tmp_path):
    bad = b"caf\xe9 au lait"
    result = cli("generate", "-m", str(tiny_dir), input=bad)
    assert_one_line_error(result, 2, r"stdin is not valid UTF-8 \(byte 3: 0xe9\)")
    (tmp_path / "p.txt").write_bytes(bad)
    result = cli("generate", "-m", str(tiny_dir), "--file", str(tmp_path / "p.txt"))
    assert_one_line_error(result, 2, r"p\.txt is not valid UTF-8")


def test_unreadable_prompt_file(cli, tiny_dir, tmp_path):
    result = cli("generate", "-m", str(tiny_dir), "--file", str(tmp_path / "none.txt"))
    assert_one_line_error(result, 2, "cannot read --file .*none.txt")


def test_prompt_longer_than_context(cli, tiny_dir):
    long_prompt = "x" * 200  # 200 byte tokens; the tiny models hold 128
    result = cli("generate", "-m", str(tiny_dir), long_prompt)
    assert_one_line_error(result, 2, "prompt has 200 tokens but the context window holds 128.*--truncate")
    kept = cli("generate", "-m", str(tiny_dir), "--truncate", "-n", "8", "--json", long_prompt)
    assert kept.returncode == 0, kept.stderr.decode()
    record = json.loads(kept.stdout)
    assert record["prompt_tokens"] == 120 and record["new_tokens"] == 8


def test_debug_shows_the_traceback(lmgen_exe, tmp_path):
    result = run_lmgen(lmgen_exe, "--debug", "generate", "-m", str(tmp_path / "nowhere"), "hi")
    assert result.returncode != 0 and b"Traceback" in result.stderr


def test_prompt_sources_agree(cli, tiny_dir, tmp_path):
    args = ["generate", "-m", str(tiny_dir), "-n", "6"]
    (tmp_path / "p.txt").write_text("The cat sat\n")
    outputs = [
        cli(*args, "The cat sat"),
        cli(*args, input=b"The cat sat\n"),
        cli(*args, "-", input=b"The cat sat"),
        cli(*args, "--file", str(tmp_path / "p.txt")),
    ]
    for result in outputs:
        assert result.returncode == 0, result.stderr.decode()
        assert result.stderr == b""
    assert len({r.stdout for r in outputs}) == 1 and outputs[0].stdout.strip()


def test_echo_prints_the_prompt_first(cli, tiny_dir):
    plain = cli("generate", "-m", str(tiny_dir), "-n", "6", "The cat sat").stdout
    echoed = cli("generate", "-m", str(tiny_dir), "-n", "6", "--echo", "The cat sat").stdout
    assert echoed == b"The cat sat" + plain


def test_piped_output_is_plain_text_even_with_colour_forced(lmgen_exe, tiny_dir):
    result = run_lmgen(lmgen_exe, "generate", "-m", str(tiny_dir), "-n", "10", "--echo", "--stats", "Hi",
                       env={"FORCE_COLOR": "", "TERM": "xterm-256color"})
    assert result.returncode == 0
    assert not ANSI.search(result.stdout)
    assert result.stdout.endswith(b"\n")


def test_json_output(cli, tiny_dir):
    result = cli("generate", "-m", str(tiny_dir), "-n", "7", "--json", "The cat sat")
    assert result.returncode == 0, result.stderr.decode()
    record = json.loads(result.stdout)  # exactly one JSON document
    assert record["prompt"] == "The cat sat"
    assert record["finish_reason"] == "length" and record["new_tokens"] == 7 == len(record["token_ids"])
    assert record["prompt_tokens"] == len("The cat sat")
    for key in ("time_to_first_token_s", "decode_s", "prefill_tokens_per_s", "decode_tokens_per_s"):
        assert record[key] >= 0
    text = cli("generate", "-m", str(tiny_dir), "-n", "7", "The cat sat").stdout.decode()
    assert text == record["text"] + "\n"


def test_jsonl_output(cli, tiny_dir):
    result = cli("generate", "-m", str(tiny_dir), "-n", "5", "--jsonl", "The cat sat")
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    events = [line["event"] for line in lines]
    assert events in (["token"] * 5 + ["done"], ["token"] * 5 + ["flush", "done"])
    assert [line["id"] for line in lines[:5]] == lines[-1]["token_ids"]
    assert "".join(line["text"] for line in lines[:-1]) == lines[-1]["text"]


def test_each_line(cli, tiny_dir):
    stdin = b"The cat sat\n\n  \nOnce upon a time\n"
    result = cli("generate", "-m", str(tiny_dir), "-n", "4", "--each-line", "--jsonl", input=stdin)
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["prompt"] for r in records] == ["The cat sat", "Once upon a time"]
    single = cli("generate", "-m", str(tiny_dir), "-n", "4", "--json", "Once upon a time")
    assert json.loads(single.stdout)["text"] == records[1]["text"]
    plain = cli("generate", "-m", str(tiny_dir), "-n", "4", "--each-line", input=stdin)
    assert plain.stdout.decode().count("\n") >= 2


def test_stats_go_to_stderr(cli, tiny_dir):
    result = cli("generate", "-m", str(tiny_dir), "-n", "5", "--stats", "--json", "Hi")
    json.loads(result.stdout)
    assert re.search(r"time to first token \d+ ms .*decode [\d.]+ tokens/s", result.stderr.decode())


def test_broken_pipe_is_quiet(lmgen_exe, smollm2_dir):
    env = {**os.environ, "LMGEN_MODEL": str(smollm2_dir)}
    shell = f"'{lmgen_exe}' generate -n 200 'The cat sat' | head -c 20"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, env=env, timeout=300)
    assert result.returncode == 0
    assert len(result.stdout) == 20
    assert result.stderr == b""


def test_sigint_stops_at_once_with_a_final_newline(lmgen_exe, smollm2_dir):
    env = {**os.environ, "LMGEN_MODEL": str(smollm2_dir)}
    # The regex allows no end before 20,000 letters, more than 1,000 tokens can make: generation
    # is still going when the signal lands, however slow the machine (the greedy reply ends at 160).
    proc = subprocess.Popen([lmgen_exe, "generate", "-n", "1000", "--regex", "[a-z ]{20000}", "The cat sat"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=interruptible)
    first = os.read(proc.stdout.fileno(), 1)  # generation has started
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert time.monotonic() - sent < 5
    assert b"Traceback" not in err
    out = first + rest
    assert out.endswith(b"\n") and len(out) < 4000


def test_terminal_gets_rich_styling_unless_no_color(lmgen_exe, tiny_dir):
    args = ["generate", "-m", str(tiny_dir), "-n", "4", "--echo", "The cat sat"]
    styled, _ = run_on_a_terminal(lmgen_exe, args, {"TERM": "xterm-256color", "NO_COLOR": ""})
    assert ANSI.search(styled) and b"The cat sat" in styled
    plain, _ = run_on_a_terminal(lmgen_exe, args, {"TERM": "xterm-256color", "NO_COLOR": "1"})
    assert not ANSI.search(plain) and b"The cat sat" in plain


def test_loading_spinner_only_on_a_terminal(lmgen_exe, smollm2_dir):
    args = ["generate", "-m", str(smollm2_dir), "-n", "2", "Hi"]
    show_at_once = {"TERM": "xterm-256color", "LMGEN_SPINNER_DELAY": "0"}
    on_terminal, _ = run_on_a_terminal(lmgen_exe, args, show_at_once, stream="stderr")
    assert b"loading model" in on_terminal
    piped = run_lmgen(lmgen_exe, *args, env=show_at_once)
    assert piped.returncode == 0 and piped.stderr == b""
    quick, _ = run_on_a_terminal(lmgen_exe, args, {"TERM": "xterm-256color", "LMGEN_SPINNER_DELAY": "60"}, "stderr")
    assert b"loading model" not in quick  # loading took less than the delay: no spinner


# ------------------------------------------------------------------- what a terminal shows (issue 24)


SPINNER = re.compile(r"[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] loading model…")


def test_show_probs_on_a_terminal_shows_the_lines_then_the_text(lmgen_exe, smollm2_dir):
    """Probability lines (stderr) used to land in the middle of the streamed text (stdout):
    " Paris 0.684 '.' | …", then a lone "."."""
    from conftest import run_in_a_terminal, screen_segments

    args = ["generate", "-m", str(smollm2_dir), "-n", "2", "--show-probs", "3", "The capital of France is"]
    piped = subprocess.run([lmgen_exe, *args, "--json"], capture_output=True, check=True)
    text = json.loads(piped.stdout)["text"]
    assert len(text.strip()) > 1 and "\n" not in text
    for env in ({"NO_COLOR": "1", "TERM": "dumb"}, {"TERM": "xterm-256color"}):
        segments = screen_segments(run_in_a_terminal(lmgen_exe, args, env))
        shown = [s for s in segments if not SPINNER.fullmatch(s)]  # the loading spinner's frames may show first
        assert shown == segments[-3:]
        assert all(re.match(r"\s*\d\.\d{3} ", s) for s in segments[-3:-1]), segments  # two probability lines
        assert segments[-1] == text  # then the text, whole, on its own line


def test_each_line_progress_never_shares_a_line_with_the_output(lmgen_exe, tiny_dir, tmp_path):
    from conftest import run_in_a_terminal, screen_segments

    path = tmp_path / "prompts.txt"
    path.write_bytes(b"".join(b"Prompt number %d is\n" % i for i in range(12)))
    args = ["generate", "-m", str(tiny_dir), "--each-line", "-n", "24", "--batch-size", "3"]
    with open(path, "rb") as stdin:
        piped = subprocess.run([lmgen_exe, *args], stdin=stdin, capture_output=True, check=True).stdout.decode()
    with open(path, "rb") as stdin:
        received = run_in_a_terminal(lmgen_exe, args, {"TERM": "xterm-256color"}, stdin)
    assert b"prompts done" in received  # the bar was there
    segments = screen_segments(received)
    for line in piped.splitlines():
        if line.strip():
            assert line in segments or line.rstrip() in segments, (line, segments)


def wait_for(condition, what: str, proc, limit: float = 300):
    """Poll until condition() holds (the state a test needs), failing if the process ended first."""
    deadline = time.monotonic() + limit
    while not condition():
        assert proc.poll() is None, f"lmgen ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} in {limit} s"
        time.sleep(0.02)


def test_ctrl_c_in_batch_says_how_many_records_were_kept_and_how_to_resume(lmgen_exe, tiny_dir, tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_text("".join(f"prompt {i}\n" for i in range(5000)))  # far more than can finish
    proc = subprocess.Popen([lmgen_exe, "batch", str(src), "--out", str(out), "-m", str(tiny_dir), "-n", "50",
                             "--batch-size", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=interruptible)

    def lines() -> int:
        return sum(part.read_bytes().count(b"\n") for part in out.glob("part-*"))

    wait_for(lambda: lines() >= 1, "a record written", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    kept = lines()
    assert 1 <= kept < 5000
    assert err.decode().splitlines() == [f"lmgen: interrupted: {kept} of 5000 record(s) kept in {out} ({kept} from "
                                         "this run); run the same command again to resume"]


def on_a_terminal(lmgen_exe, args, env) -> tuple[int, str]:
    """(exit code, what the terminal showed) of lmgen with every stream on one pseudo-terminal."""
    import pexpect

    child = pexpect.spawn(lmgen_exe, args, env={**os.environ, "TERM": "xterm-256color", **env}, timeout=120)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before.decode()


def test_the_spinner_shows_from_the_process_start_and_is_erased_before_an_error(lmgen_exe, tmp_path):
    """A model path that does not exist fails before any weight is read (while torch imports and
    the config is looked for): the spinner has been showing since the start, and is erased with
    spaces before the error line, which stands alone."""
    code, shown = on_a_terminal(lmgen_exe, ["generate", "-m", str(tmp_path / "missing"), "Hi"],
                                {"LMGEN_SPINNER_DELAY": "0"})
    assert code == 3
    spinning, _, rest = shown.rpartition("\r" + " " * len("⠋ loading model…") + "\r")
    assert "⠋ loading model…" in spinning
    assert rest == f"lmgen: error: model path {tmp_path / 'missing'} does not exist\r\n"
    assert not ANSI.search((spinning + rest).encode())  # no escape codes before rich is imported


@pytest.mark.parametrize("args", [["generate", "--help"], ["generate", "--server", "http://127.0.0.1:9", "Hi"],
                                  ["inspect"], ["--version"]])
def test_no_early_spinner_for_what_loads_no_model_here(lmgen_exe, args):
    _, shown = on_a_terminal(lmgen_exe, args, {"LMGEN_SPINNER_DELAY": "0"})
    assert "loading model" not in shown
