"""Environment variables are checked as options are: a bad value is one line naming the variable
(or the option) and what it accepts, exit 2 (never exit 1 and a traceback, never a silent default).

Every LMGEN_ variable the documentation (README.md and docs/) names for lmgen itself is in BAD, so a
new one cannot be added unchecked (``test_every_documented_variable_is_checked``).
"""

import os
import re
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from lmgen.model import kernels

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTATION = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Knobs of the test suite and the benchmark scripts, not of lmgen.
DEVELOPMENT = {"LMGEN_SOURCE", "LMGEN_EXE", "LMGEN_FUZZ_ITERATIONS", "LMGEN_CLI_FUZZ_ITERATIONS", "LMGEN_CLI_FUZZ_SEED",
               "LMGEN_HTTP_FUZZ_ITERATIONS", "LMGEN_HTTP_FUZZ_SEED", "LMGEN_HYPOTHESIS", "LMGEN_HYPOTHESIS_EXAMPLES",
               "LMGEN_TEST_INSTALLED"}
BAD_URLS = ["notaurl", "http://exa mple.com", "ftp://example.com", "http://", "http://example.com:99999",
            "http://[::1", "http://example.com/?q=1", "http://example.com/#top", "http://exa\tmple.com"]
SERVER = "http://127.0.0.1:9"  # nothing listens: a key that passed would be exit 4, not 2
LOCAL = ["-m", "{model}", "-n", "1"]  # the tiny model (with a chat template)

# variable -> (bad values, the command that reads it, what the error says it accepts)
BAD = {
    "LMGEN_SPINNER_DELAY": (["abc", "-1", "nan", "inf", "1e9"], ["generate", *LOCAL, "hi"],
                            "a number of seconds from 0 to 3600"),
    "LMGEN_THREADS": (["abc", "0", "-2", "1.5", "99999"], ["generate", *LOCAL, "hi"], "a whole number from 1 to"),
    "LMGEN_KERNELS": (["yes", "2", "Native"], ["generate", *LOCAL, "hi"], "1, native or 0"),
    "LMGEN_AMX": (["off", "2", "true"], ["generate", *LOCAL, "hi"], "1 or 0"),
    "LMGEN_HOME": (["{file}"], ["generate", "hi"], "a directory"),  # the default model lives there
    "LMGEN_SERVER": (BAD_URLS, ["generate", "hi"], "an http:// or https:// URL"),
    "LMGEN_API_KEY": (["a\nb", "has space", "\u0142\u00f3d\u017a", "\x7f"], ["generate", "--server", SERVER, "hi"],
                      "visible ASCII"),
    "LMGEN_CHAT_HISTORY": (["{fifo}", "{dir}"], ["chat", *LOCAL], "not a regular file"),
}


def documented() -> set[str]:
    return {name for page in DOCUMENTATION for name in re.findall(r"LMGEN_[A-Z0-9_]+", page.read_text(encoding="utf-8"))}


@pytest.fixture
def fresh_kernels():
    """The kernels loaded afresh (library() is cached per process: LMGEN_KERNELS and LMGEN_AMX are
    read when it loads), and again after the test, with the environment as it was."""
    kernels.library.cache_clear()
    yield
    kernels.library.cache_clear()


def value_of(template: str, tmp_path: Path) -> str:
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "dir").mkdir(exist_ok=True)
    if not (tmp_path / "fifo").exists():
        os.mkfifo(tmp_path / "fifo")
    return template.format(file=tmp_path / "file", fifo=tmp_path / "fifo", dir=tmp_path / "dir")


@pytest.mark.parametrize("variable, value", [(name, value) for name, (values, _, _) in BAD.items() for value in values])
def test_a_bad_value_is_one_line_naming_the_variable(cli, tiny_chat_dir, tmp_path, monkeypatch, fresh_kernels,
                                                     variable, value):
    _, args, accepted = BAD[variable]
    monkeypatch.delenv("LMGEN_MODEL", raising=False)
    monkeypatch.setenv(variable, value_of(value, tmp_path))
    result = cli(*[arg.format(model=tiny_chat_dir) for arg in args], input=b"hi\n")
    assert_one_line_error(result, 2, rf"{variable}\b.*{re.escape(accepted)}")


def test_every_documented_variable_is_checked():
    assert len(DOCUMENTATION) > 1  # the README and the pages under docs/
    assert documented() - DEVELOPMENT - {"LMGEN_MODEL"} == set(BAD)  # LMGEN_MODEL: below


def test_every_variable_is_on_the_environment_page():
    """The reference page lists every variable of lmgen's own, LMGEN_MODEL included."""
    page = (ROOT / "docs" / "reference" / "environment.md").read_text(encoding="utf-8")
    assert set(BAD) | {"LMGEN_MODEL"} <= set(re.findall(r"LMGEN_[A-Z0-9_]+", page))


def test_a_missing_model_in_lmgen_model_is_named_as_model_paths_are(cli, tmp_path, monkeypatch):
    """As `--model MISSING` (a model that cannot be used: exit 3), naming the variable."""
    monkeypatch.setenv("LMGEN_MODEL", str(tmp_path / "no-such-model"))
    assert_one_line_error(cli("generate", "hi"), 3, r"LMGEN_MODEL names .*no-such-model, which does not exist")


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("name", ["generate", "chat"])
def test_a_bad_server_option_is_one_line_naming_it(cli, monkeypatch, name, url):
    monkeypatch.delenv("LMGEN_SERVER", raising=False)
    result = cli(name, "--server", url, *(["hi"] if name == "generate" else []), input=b"hi\n")
    assert_one_line_error(result, 2, r"^lmgen: error: --server must be an http:// or https:// URL")


@pytest.mark.parametrize("key", ["a\nb", "has space", "\u0142"])
def test_a_bad_api_key_option_is_one_line_naming_it(cli, monkeypatch, key):
    monkeypatch.delenv("LMGEN_API_KEY", raising=False)
    result = cli("generate", "--server", SERVER, "--api-key", key, "hi")
    assert_one_line_error(result, 2, r"^lmgen: error: --api-key must be visible ASCII")
    assert key not in result.stderr.decode()  # a key is a secret: never echoed


def test_empty_variables_are_unset(cli, tiny_dir, monkeypatch, fresh_kernels):
    for name in ("LMGEN_SPINNER_DELAY", "LMGEN_THREADS", "LMGEN_KERNELS", "LMGEN_AMX", "LMGEN_SERVER", "LMGEN_API_KEY",
                 "LMGEN_HOME"):
        monkeypatch.setenv(name, "")
    result = cli("generate", "-m", str(tiny_dir), "-n", "2", "--api-key", "", "hi")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("variable, value", [("LMGEN_SPINNER_DELAY", "0"), ("LMGEN_SPINNER_DELAY", "2.5"),
                                             ("LMGEN_THREADS", "1"), ("LMGEN_KERNELS", "0"), ("LMGEN_AMX", "0")])
def test_good_values_are_taken(cli, tiny_dir, monkeypatch, fresh_kernels, variable, value):
    monkeypatch.setenv(variable, value)
    result = cli("generate", "-m", str(tiny_dir), "-n", "2", "hi")
    assert result.returncode == 0, result.stderr
