"""``--thinking show|hide|only`` (lmgen.cli.thinking) for ``generate --chat`` and ``chat``: a thinking
model's reasoning dim on a terminal, as it came in a pipe, dropped (hide) or alone (only), split
the same way however the stream is cut; records carry it apart as ``reasoning``; the ``--server``
paths print the server's ``reasoning_content`` the same way."""

import io
import itertools
import json
import os
import re
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pexpect
import pytest
from conftest import CSI, assert_one_line_error, interruptible, run_on_a_terminal
from hypothesis import given
from hypothesis import strategies as st

from lmgen.cli.thinking import AsWritten, ThinkingView
from lmgen.text.reply import ReplySplitter, split_reply

# The template opens the thinking block in the generation prompt (as DeepSeek-R1's distills do);
# the regex makes the tiny random model think, close the block and answer.
TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant><think>\n{% endif %}")
THOUGHT, ANSWER = "Let me think.", "It is 4."
REPLY = THOUGHT + "</think>\n\n" + ANSWER  # what the model writes
FORCE = ["--regex", r"Let me think\.</think>\n\nIt is 4\.", "-n", "40"]
DIM = re.compile(rb"\x1b\[2m(.*?)\x1b\[0m", re.DOTALL)


@pytest.fixture(scope="module")
def think_dir(tmp_path_factory, tiny_chat_dir) -> Path:
    path = tmp_path_factory.mktemp("tiny-think")
    for item in tiny_chat_dir.iterdir():
        shutil.copy(item, path / item.name)
    (path / "chat_template.jinja").write_text(TEMPLATE)
    return path


# ----------------------------------------------------------------- the view, over any cut of the stream

MARKERY = st.text(alphabet="<>/thinka \n", max_size=30)  # marker pieces, often whole markers
TEXT = st.one_of(st.text(max_size=30), MARKERY)


def viewed(mode: str, text: str, cuts: list[int], opened: bool, styled: bool) -> list[tuple[str, bool]]:
    view, out, start = ThinkingView(mode, opened, styled), [], 0
    for cut in sorted({c % (len(text) + 1) for c in cuts}) + [len(text)]:
        out += view.feed(text[start:cut])
        start = cut
    return out + view.finish()


def joined(pieces, dim=None) -> str:
    return "".join(text for text, d in pieces if dim is None or d == dim)


@given(st.one_of(TEXT, st.tuples(st.booleans(), TEXT, st.sampled_from(["", "\n", "\n\n", " "]), TEXT).map(
    lambda t: ("<think>" if t[0] else "") + t[1] + "</think>" + t[2] + t[3])),
    st.booleans(), st.lists(st.integers(0, 200), max_size=10))
def test_show_is_the_reply_as_written_and_its_parts_are_the_splitters_for_any_cut(text, opened, cuts):
    whole = split_reply(text, thinking=opened)
    shown = viewed("show", text, cuts, opened, styled=True)
    assert joined(shown) == text  # nothing added, nothing lost: only dimming differs
    assert joined(shown, dim=False) == whole.content  # the plain part is the answer, the dim part before it
    assert text.endswith(whole.content) and joined(shown, dim=True) == text[:len(text) - len(whole.content)]
    assert joined(viewed("hide", text, cuts, opened, styled=True)) == whole.content
    assert joined(viewed("only", text, cuts, opened, styled=False)) == whole.reasoning
    assert viewed("show", text, cuts, opened, styled=False) == [(p, False) for p in chunks_of(text, cuts)]


def chunks_of(text: str, cuts: list[int]) -> list[str]:
    edges = [0] + sorted({c % (len(text) + 1) for c in cuts}) + [len(text)]
    return [text[a:b] for a, b in itertools.pairwise(edges) if text[a:b]]


@given(TEXT, st.booleans(), st.lists(st.integers(0, 200), max_size=10))
def test_a_servers_parts_written_back_split_into_the_same_parts(text, opened, cuts):
    """--server: reasoning_content and content deltas, written back as one text, split as the reply did."""
    server, as_written, written = ReplySplitter(None, opened), AsWritten(), ""
    for piece in chunks_of(text, cuts) + [None]:
        for kind, value in server.feed(piece) if piece is not None else server.finish():
            written += as_written(value, "") if kind == "reasoning" else as_written("", value)
    again, whole = split_reply(written), split_reply(text, thinking=opened)
    assert (again.reasoning, again.content) == (whole.reasoning, whole.content)


# ----------------------------------------------------------------------------------- generate --chat


def test_hide_prints_the_answer_and_only_the_reasoning_of_what_show_prints(cli, think_dir):
    args = ["generate", "-m", str(think_dir), "--chat", *FORCE, "What is 2+2?"]
    show = cli(*args)
    assert show.returncode == 0, show.stderr
    assert show.stdout.decode() == REPLY + "\n"  # piped: as it came, no escape codes
    assert cli(*args, "--thinking", "show").stdout == show.stdout
    assert cli(*args, "--thinking", "hide").stdout.decode() == ANSWER + "\n"
    assert cli(*args, "--thinking", "only").stdout.decode() == THOUGHT + "\n"
    samples = cli(*args, "--thinking", "hide", "--num-samples", "2")  # printed at the end, each through its view
    assert samples.stdout.decode() == (ANSWER + "\n") * 2
    lines = cli(*args[:-1], "--thinking", "only", "--each-line", input=b"What is 2+2?\nAnd 3+1?\n")
    assert lines.stdout.decode() == (THOUGHT + "\n") * 2


def test_records_carry_the_reasoning_apart_whatever_the_mode(cli, think_dir, tiny_chat_dir):
    args = ["generate", "-m", str(think_dir), "--chat", *FORCE, "What is 2+2?"]
    record = json.loads(cli(*args, "--json").stdout)
    assert (record["reasoning"], record["text"]) == (THOUGHT, ANSWER)
    assert list(record).index("reasoning") == list(record).index("text") + 1
    for mode in ("hide", "only"):  # --thinking changes only what is printed for a person
        again = json.loads(cli(*args, "--json", "--thinking", mode).stdout)
        assert list(again) == list(record) and (again["reasoning"], again["text"]) == (THOUGHT, ANSWER)
    lines = [json.loads(line) for line in cli(*args, "--jsonl").stdout.splitlines()]
    done = lines[-1]
    written = "".join(line["text"] for line in lines[:-1])  # the token lines: the reply as written
    assert written == REPLY == done["reasoning"] + "</think>\n\n" + done["text"]
    assert split_reply(written, thinking=True).reasoning == done["reasoning"]
    plain = json.loads(cli("generate", "-m", str(tiny_chat_dir), "--chat", "-n", "4", "--json", "Hi").stdout)
    assert "reasoning" not in plain  # no thinking block: the record as it always was


def test_batch_records_of_chat_prompts_are_generates(cli, think_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "prompt": "What is 2+2?", "system": "Be brief."}\n')
    assert cli("batch", str(src), "--out", str(tmp_path / "out"), "-m", str(think_dir), *FORCE).returncode == 0
    batch = json.loads(next((tmp_path / "out").glob("part-*")).read_text())
    record = json.loads(cli("generate", "-m", str(think_dir), "--chat", "--system", "Be brief.", *FORCE, "--json",
                            "What is 2+2?").stdout)
    assert (batch["reasoning"], batch["text"]) == (record["reasoning"], record["text"]) == (THOUGHT, ANSWER)


@pytest.mark.parametrize("args, pattern", [
    (["--thinking", "hide"], "--thinking needs --chat"),
    (["--chat", "--thinking", "dim"], r"--thinking must be one of show, hide, only, got 'dim'"),
])
def test_thinking_needs_chat_and_a_known_mode(cli, think_dir, args, pattern):
    assert_one_line_error(cli("generate", "-m", str(think_dir), *args, "hi"), 2, pattern)


def test_on_a_terminal_the_reasoning_is_dim_and_the_answer_plain(lmgen_exe, think_dir):
    args = ["generate", "-m", str(think_dir), "--chat", *FORCE, "What is 2+2?"]
    colour = {"TERM": "xterm-256color", "NO_COLOR": ""}
    shown, _ = run_on_a_terminal(lmgen_exe, args, colour)
    assert b"".join(DIM.findall(shown)).replace(b"\r\n", b"") == (THOUGHT + "</think>").encode()
    assert ANSWER.encode() not in b"".join(DIM.findall(shown))
    assert CSI.sub(b"", shown) == (REPLY + "\n").replace("\n", "\r\n").encode()  # the pipe's text, dimmed
    hidden, _ = run_on_a_terminal(lmgen_exe, [*args, "--thinking", "hide"], colour)
    assert b"\x1b[2m" not in hidden and CSI.sub(b"", hidden) == (ANSWER + "\r\n").encode()
    plain, _ = run_on_a_terminal(lmgen_exe, args, {"TERM": "xterm-256color", "NO_COLOR": "1"})
    assert b"\x1b" not in plain and plain == (REPLY + "\n").replace("\n", "\r\n").encode()


# ------------------------------------------------------------------------------------------------ chat


def test_piped_chat_prints_each_reply_as_its_mode_says(cli, think_dir):
    """The tiny model never closes the block its prompt opened: every reply is all reasoning."""
    lines = b"hi\nagain\n"
    show = cli("chat", "-m", str(think_dir), "-n", "6", input=lines)
    assert show.returncode == 0, show.stderr
    replies = show.stdout.decode().splitlines()
    assert len(replies) == 2 and all(replies)
    assert cli("chat", "-m", str(think_dir), "-n", "6", "--thinking", "only", input=lines).stdout == show.stdout
    assert cli("chat", "-m", str(think_dir), "-n", "6", "--thinking", "hide", input=lines).stdout == b"\n\n"
    jsonl = cli("chat", "-m", str(think_dir), "-n", "6", "--jsonl", "--thinking", "hide", input=lines)
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [(r["reasoning"], r["text"]) for r in records] == [(reply, "") for reply in replies]


class Scripted:
    """A conversation whose replies are given texts, streamed a few characters at a time."""

    def __init__(self, *replies: str):
        from lmgen.engine.chat_history import ChatHistory

        self.history, self.replies = ChatHistory(), list(replies)
        self.messages, self.reused, self.prefilled, self.dropped, self.thinking = self.history.messages, 0, 0, 0, False

    def reply(self, user):
        from lmgen.engine.events import Finished, Token

        self.messages.append({"role": "user", "content": user})
        text = self.replies.pop(0)
        for at in range(0, len(text), 3):
            yield Token(id=0, text=text[at:at + 3])
        yield Finished(reason="stop", text="", prompt_tokens=1, new_tokens=len(text), prefill_seconds=0.1,
                       decode_seconds=0.1, output=text)
        self.messages.append({"role": "assistant", "content": text})


@pytest.mark.parametrize("mode, expected", [
    ("show", "<think>Let me think.</think>\\n\\nIt is 4.\nPlain.\n"),
    ("hide", "It is 4.\nPlain.\n"),
    ("only", "Let me think.\n\n"),
])
def test_chat_replies_split_as_they_stream(monkeypatch, capsys, mode, expected):
    from lmgen.cli import repl

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"What is 2+2?\nSay plain.\n")))
    conversation = Scripted("<think>" + REPLY, "Plain.")
    repl.run_chat(conversation, jsonl=False, stats=False, thinking=mode)
    assert capsys.readouterr().out == expected
    assert conversation.messages[1]["content"] == "<think>" + REPLY  # the history keeps the reply as written


def test_chat_on_a_terminal_dims_the_reasoning(think_dir, tmp_path):
    env = {**os.environ, "LMGEN_CHAT_HISTORY": str(tmp_path / "history"), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    seen = {}
    for mode in ("show", "hide"):
        child = pexpect.spawn(str(Path(sys.executable).parent / "lmgen"),
                              ["chat", "-m", str(think_dir), "-n", "6", "--thinking", mode], env=env,
                              encoding="utf-8", timeout=120, preexec_fn=interruptible, dimensions=(40, 200))
        child.expect_exact(">>> ")
        child.sendline("hi")
        child.expect_exact(">>> ")
        seen[mode] = child.before.split("hi", 1)[1]
        child.sendeof()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    assert "\x1b[2m" in seen["show"]  # the reply is all reasoning: dim
    assert "\x1b[2m" not in seen["hide"] and not CSI.sub(b"", seen["hide"].encode()).strip()


# ------------------------------------------------------------------------------------------- --server


class FakeServer(BaseHTTPRequestHandler):
    """/v1/chat/completions as lmgen serve answers a thinking model: reasoning_content apart."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        usage = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
        if not body.get("stream"):
            message = {"role": "assistant", "content": ANSWER, "reasoning_content": THOUGHT}
            reply = {"choices": [{"index": i, "message": message, "finish_reason": "stop"} for i in range(body["n"])],
                     "usage": usage}
            return self.send(200, "application/json", json.dumps(reply).encode())
        deltas = [{"role": "assistant", "content": ""}, {"reasoning_content": "Let me"},
                  {"reasoning_content": " think."}, {"content": "It is"}, {"content": " 4."}]
        events = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        events += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, {"choices": [], "usage": usage}]
        self.send(200, "text/event-stream", "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode()
                  + b"data: [DONE]\n\n")

    def send(self, status, kind, data):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_server_replies_honour_thinking_as_local_ones(cli, fake_server, tmp_path):
    written = "<think>" + THOUGHT + "</think>\n\n" + ANSWER  # the server's parts, as a model writes them
    chat = ["chat", "--server", fake_server]
    assert cli(*chat, input=b"hi\n").stdout.decode() == written.replace("\n", "\\n") + "\n"
    assert cli(*chat, "--thinking", "hide", input=b"hi\n").stdout.decode() == ANSWER + "\n"
    assert cli(*chat, "--thinking", "only", input=b"hi\n").stdout.decode() == THOUGHT + "\n"
    saved = tmp_path / "saved.json"
    record = json.loads(cli(*chat, "--jsonl", input=f"hi\n/save {saved}\n".encode()).stdout)
    assert (record["reasoning"], record["text"]) == (THOUGHT, ANSWER)
    assert json.loads(saved.read_text())[-1]["content"] == ANSWER  # the history keeps the answer, as before
    generate = ["generate", "--server", fake_server, "--chat"]
    assert cli(*generate, "hi").stdout.decode() == written + "\n"  # streamed
    assert cli(*generate, "--thinking", "hide", "hi").stdout.decode() == ANSWER + "\n"
    assert cli(*generate, "--thinking", "only", "--each-line", input=b"hi\nho\n").stdout.decode() == \
        (THOUGHT + "\n") * 2  # whole replies
    record = json.loads(cli(*generate, "--json", "hi").stdout)
    assert (record["reasoning"], record["text"]) == (THOUGHT, ANSWER)
