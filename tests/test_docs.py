"""Every example in README.md and docs/ is checked (``mkdocs build --strict`` checks the links).

What an example is, and how it is checked:

- A command line of a ``sh``/``bash``/``shell`` block (every line but comments), or of a
  ``console`` block (the lines after ``$ ``; what follows them is their output): each ``lmgen``
  invocation in it is parsed by lmgen's own command-line parser (click's ``make_context``, which
  refuses an unknown command or option, a missing argument and a value of the wrong type, and
  runs nothing), and each ``python scripts/NAME.py`` invocation must name a script that has every
  option it uses. Then the line is run for real — in this process when it is one ``lmgen`` command
  (fed by ``echo``/``printf``, or by the ``>>> `` lines of a chat transcript), else by bash —
  against the default model, in a directory holding the files the pages define, and must exit 0.
- A ``python`` block: the blocks of a page run in order in one namespace.

An HTML comment right before a block changes that: ``<!-- not run: REASON -->`` only parses the
commands (and compiles the Python); ``<!-- server -->`` runs the block against a real ``lmgen
serve`` on a free port (put in place of the pages' port 8000); ``<!-- file: NAME -->`` writes the
block to NAME where the examples run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELLS = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")
KNOWN_MARKERS = re.compile(r"not run: \S.*|server|file: \S+")
PAGE_PORT = "8000"  # the port the pages' server examples name
OPERATORS = {"|", "||", "&&", ";", "&"}
REDIRECTIONS = {">", ">>", "<", "2>", "&>"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str | None  # the HTML comment right before the block, if any

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Command:
    """One command line of a shell block, continuation lines joined."""

    text: str
    block: Block
    stdin: bytes | None = None  # a chat transcript's ">>> " lines


def blocks_of(text: str, page: Path) -> list[Block]:
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.groups()
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.match(before)
        found.append(Block(page, i + 1, lang.lower(), "\n".join(body) + "\n", marker.group(1) if marker else None))
        i = j + 1
    return found


def commands_of(block: Block) -> list[Command]:
    """The command lines of a shell block: a console block's after "$ ", with the ">>> " lines of
    their output as stdin; every line of the others but comments."""
    lines = block.text.splitlines()
    found, i = [], 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if block.lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        elif not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        stdin = None
        if block.lang == "console":
            output = []
            while i < len(lines) and not lines[i].startswith("$ "):
                output.append(lines[i])
                i += 1
            typed = [text[4:] for text in output if text.startswith(">>> ")]
            stdin = "".join(text + "\n" for text in typed).encode() if typed else None
        found.append(Command(line.strip(), block, stdin))
    return found


def words_of(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def segments(command: str) -> list[list[str]]:
    """The simple commands of a command line, split at |, ||, &&, ; and &, with redirections
    and their targets left out."""
    parts: list[list[str]] = [[]]
    words = words_of(command)
    k = 0
    while k < len(words):
        word = words[k]
        if word in OPERATORS:
            parts.append([])
        elif word in REDIRECTIONS:
            k += 1  # its target
        else:
            parts[-1].append(word)
        k += 1
    return [part for part in parts if part]


def assignments(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading VAR=value words, and the command after them."""
    env = {}
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        name, _, value = words[0].partition("=")
        env[name] = value
        words = words[1:]
    return env, words


def lmgen_args(command: str) -> list[list[str]]:
    return [words[1:] for _, words in map(assignments, segments(command)) if words and words[0] == "lmgen"]


def script_calls(command: str) -> list[list[str]]:
    return [words[1:] for _, words in map(assignments, segments(command))
            if len(words) > 1 and words[0] in ("python", "python3") and words[1].endswith(".py")]


BLOCKS = [block for page in PAGES for block in blocks_of(page.read_text(encoding="utf-8"), page)]
COMMANDS: dict[str, Command] = {}  # each distinct command line once (the README repeats the guides')
for _block in BLOCKS:
    if _block.lang in SHELLS:
        for _command in commands_of(_block):
            COMMANDS.setdefault(f"{_block.marker == 'server'}:{_command.text}", _command)
LMGEN_COMMANDS = [command for command in COMMANDS.values() if lmgen_args(command.text)]
SCRIPT_COMMANDS = [command for command in COMMANDS.values() if script_calls(command.text)]
PYTHON = [block for block in BLOCKS if block.lang in ("python", "py")]
FILES = {block.marker[len("file: "):]: block.text for block in BLOCKS if (block.marker or "").startswith("file: ")}


def ids(items) -> list[str]:
    return [item.block.where if isinstance(item, Command) else item.where for item in items]


# -- parsing with lmgen's own parser ---------------------------------------------------------------

def parse(args: list[str]) -> None:
    """Parse ``lmgen ARGS`` as the real command line does, running nothing: an unknown command or
    option, a missing argument or a value of the wrong type raises click's UsageError."""
    import typer
    import typer.main

    from lmgen.cli.main import app

    group = typer.main.get_command(app)
    try:
        ctx = group.make_context("lmgen", list(args))
        rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
        if not rest:
            return
        name, command, rest = group.resolve_command(ctx, rest)
        command.make_context(name, rest, parent=ctx)
    except typer.Exit as exit:  # --version: an eager option that ends parsing, successfully
        assert exit.exit_code == 0


@pytest.mark.parametrize("command", LMGEN_COMMANDS, ids=ids(LMGEN_COMMANDS))
def test_every_lmgen_example_parses(command, capsys):
    for args in lmgen_args(command.text):
        try:
            parse(args)
        except Exception as exc:  # click's UsageError and its kinds
            pytest.fail(f"{command.block.where}: `lmgen {shlex.join(args)}` does not parse: {exc}")
    capsys.readouterr()  # --version's line


@pytest.mark.parametrize("command", SCRIPT_COMMANDS, ids=ids(SCRIPT_COMMANDS))
def test_every_script_example_names_options_the_script_has(command):
    for words in script_calls(command.text):
        script = ROOT / words[0]
        assert script.is_file(), f"{command.block.where}: no script {words[0]}"
        source = script.read_text(encoding="utf-8")
        for option in (word.split("=")[0] for word in words[1:] if word.startswith("--")):
            assert f'"{option}"' in source, f"{command.block.where}: {words[0]} has no option {option}"


def test_an_example_with_an_option_that_does_not_exist_fails():
    page = ROOT / "docs" / "example.md"
    block, = blocks_of('Text.\n\n```console\n$ lmgen generate --no-such-option -n 2 "hi"\n```\n', page)
    args, = lmgen_args(commands_of(block)[0].text)
    parse(["generate", "-n", "2", "hi"])
    with pytest.raises(Exception, match="--no-such-option"):
        parse(args)
    with pytest.raises(Exception, match="not a valid integer|is not a valid int"):
        parse(["generate", "-n", "two", "hi"])
    with pytest.raises(Exception, match="No such command"):
        parse(["genrate", "hi"])


def test_the_collector_reads_blocks_markers_and_commands():
    text = ("<!-- not run: a reason -->\n```sh\nlmgen list  # a comment\nLMGEN_THREADS=1 lmgen generate \\\n"
            "    -n 2 'a b' | head -c 5 > out.txt\n```\n\n- a list\n\n    ```console\n    $ lmgen chat\n"
            "    >>> Hi\n    Hello.\n    ```\n")
    first, second = blocks_of(text, ROOT / "README.md")
    assert (first.marker, first.lang, second.marker, second.lang) == ("not run: a reason", "sh", None, "console")
    listing, generating = commands_of(first)
    assert lmgen_args(listing.text) == [["list"]]
    assert lmgen_args(generating.text) == [["generate", "-n", "2", "a b"]]
    chat, = commands_of(second)
    assert (lmgen_args(chat.text), chat.stdin) == ([["chat"]], b"Hi\n")


def test_the_pages_have_examples_and_every_marker_is_known():
    assert len(LMGEN_COMMANDS) >= 40 and len(PYTHON) >= 10 and len(SCRIPT_COMMANDS) >= 10
    for block in BLOCKS:
        if block.marker is not None and block.lang in (SHELLS | {"python", "py"}):
            assert KNOWN_MARKERS.fullmatch(block.marker), f"{block.where}: unknown marker <!-- {block.marker} -->"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250, "the README stays short: the rest belongs in docs/"


# -- running them ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """Where the examples run: the files the pages define, and configs/."""
    path = tmp_path_factory.mktemp("examples")
    (path / "configs").symlink_to(ROOT / "configs")  # `lmgen inspect configs/…`, as from the repository's root
    for name, text in FILES.items():
        (path / name).write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def served():
    from test_serve import Served

    server = Served("--max-batch", "4")
    yield server
    server.stop()


def on_the_server(text: str, served) -> str:
    return re.sub(rf"\b(localhost|127\.0\.0\.1):{PAGE_PORT}\b", f"127.0.0.1:{served.port}", text)


def echoed(words: list[str]) -> bytes | None:
    """What ``echo ARGS`` or ``printf FORMAT`` writes, for the plain cases the pages use."""
    if words[0] == "echo" and not any(w.startswith("-") for w in words[1:]):
        return (" ".join(words[1:]) + "\n").encode()
    if words[0] == "printf" and len(words) == 2 and "%" not in words[1]:
        return words[1].encode().decode("unicode_escape").encode()
    return None


def run_example(command: Command, text: str, cli, monkeypatch, workdir: Path):
    monkeypatch.chdir(workdir)
    parts = [assignments(words) for words in segments(text)]
    operators = [word for word in words_of(text) if word in OPERATORS | REDIRECTIONS]
    simple = all(not env for env, _ in parts) and operators in ([], ["|"])  # lmgen, or SOMETHING | lmgen
    if simple and parts[-1][1][0] == "lmgen":
        stdin = command.stdin
        if len(parts) == 2:
            stdin = echoed(parts[0][1])
        if len(parts) == 1 or stdin is not None:
            args = [os.path.expanduser(word) if word.startswith("~") else word for word in parts[-1][1][1:]]
            result = cli(*args, input=stdin if stdin is not None else b"")
            assert result.returncode == 0, f"{command.block.where}: `{text}` exited {result.returncode}: " \
                                           f"{result.stderr.decode(errors='replace')}"
            return result.stdout
    for _, words in parts:
        if words and shutil.which(words[0], path=path_with_lmgen()) is None:
            pytest.skip(f"{words[0]} is not installed here")
    result = subprocess.run(["bash", "-c", text], cwd=workdir, capture_output=True, timeout=300, stdin=subprocess.DEVNULL,
                            check=False,
                            env={**os.environ, "PATH": path_with_lmgen()})
    assert result.returncode == 0, f"{command.block.where}: `{text}` exited {result.returncode}: " \
                                   f"{result.stderr.decode(errors='replace')}"
    return result.stdout


def path_with_lmgen() -> str:
    return str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")


RUN = [command for command in COMMANDS.values() if command.block.marker is None]
SERVER = [c for c in COMMANDS.values() if c.block.marker == "server"]


@pytest.mark.parametrize("command", RUN, ids=ids(RUN))
def test_every_example_runs(command, cli, monkeypatch, workdir):
    run_example(command, command.text, cli, monkeypatch, workdir)


@pytest.mark.parametrize("command", SERVER, ids=ids(SERVER))
def test_every_server_example_runs_against_a_server(command, served, cli, monkeypatch, workdir):
    output = run_example(command, on_the_server(command.text, served), cli, monkeypatch, workdir)
    if output.lstrip().startswith(b"{"):  # curl: an answer, not an error object
        assert "error" not in json.loads(output), output


def python_pages() -> list[Path]:
    return sorted({block.page for block in PYTHON})


@pytest.mark.parametrize("page", python_pages(), ids=[str(p.relative_to(ROOT)) for p in python_pages()])
def test_the_python_examples_of_a_page_run_in_order(page, monkeypatch, workdir, capsys):
    monkeypatch.chdir(workdir)
    namespace: dict = {"__name__": "__docs__"}
    for block in (b for b in PYTHON if b.page == page):
        code = compile(block.text, block.where, "exec")
        if block.marker is None:
            exec(code, namespace)
    capsys.readouterr()


SERVER_PYTHON = [block for block in PYTHON if block.marker == "server"]


@pytest.mark.parametrize("block", SERVER_PYTHON, ids=ids(SERVER_PYTHON))
def test_the_server_python_examples_run_against_a_server(block, served, capsys):
    exec(compile(on_the_server(block.text, served), block.where, "exec"), {"__name__": "__docs__"})
    capsys.readouterr()


def test_the_readmes_links_lead_to_files():
    """mkdocs checks the links between pages; the README is not one of them."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def test_files_defined_by_the_pages_are_what_they_say():
    assert json.loads(FILES["person.json"])["type"] == "object"
    for line in FILES["prompts.jsonl"].splitlines():
        assert "prompt" in json.loads(line)

