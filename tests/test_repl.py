"""`lmgen chat` driven through a pseudo-terminal (pexpect), and from a pipe."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from conftest import interruptible

PROMPT = ">>> "
# A reply the default model carries on past 1,500 tokens, alone or after another exchange: Ctrl-C
# sent once it has begun lands inside it, however slow the machine.
STORY = "Tell me a very long story about a dragon named Zorvath and his adventures. Make it as long as you can."
ESCAPE = re.compile(r"\x1b")


@pytest.fixture(scope="module")
def default_model() -> str:
    from lmgen.formats.paths import resolve_model

    return str(resolve_model(None))


@pytest.fixture
def env(tmp_path, default_model):
    return {**os.environ, "LMGEN_MODEL": default_model, "LMGEN_CHAT_HISTORY": str(tmp_path / "history"),
            "NO_COLOR": "1", "TERM": "dumb"}


def lmgen_exe() -> str:
    return str(Path(sys.executable).parent / "lmgen")


def spawn(env, *args) -> pexpect.spawn:
    child = pexpect.spawn(lmgen_exe(), ["chat", "-n", "24", *args], env=env, encoding="utf-8", timeout=120,
                          preexec_fn=interruptible,
                          dimensions=(40, 200))
    child.logfile_read = io.StringIO()  # all the terminal showed
    child.expect_exact(PROMPT)
    return child


def say(child, text: str) -> str:
    """Send a line; the reply printed before the next prompt."""
    child.sendline(text)
    child.expect_exact(PROMPT)
    return child.before.replace("\r\n", "\n").removeprefix(text + "\n").strip()


def test_two_turns_and_the_commands(env, tmp_path):
    child = spawn(env)
    first = say(child, "What is the capital of France?")
    second = say(child, "What is the population of that city?")
    assert "Paris" in second, (first, second)  # "that city" is the first turn's
    say(child, "/undo")
    again = say(child, "What is the population of that city?")
    assert again == second  # /undo dropped the last exchange: the same conversation, the same greedy reply
    saved = tmp_path / "conversation.json"
    say(child, f"/save {saved}")
    messages = json.loads(saved.read_text())
    assert [m["role"] for m in messages if m["role"] != "system"] == ["user", "assistant", "user", "assistant"]
    assert messages[-1]["content"] == again
    say(child, "/reset")
    forgot = say(child, "What is the population of that city?")
    assert "Paris" not in forgot
    say(child, f"/load {saved}")
    say(child, "/undo")
    assert say(child, "What is the population of that city?") == second  # /load gave the history back
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert not ESCAPE.search(child.logfile_read.getvalue())  # NO_COLOR: not one escape code in the session


def test_ctrl_c_cuts_a_reply_and_the_next_turn_works(env, tmp_path):
    child = spawn(env, "-n", "1500")  # the story runs on past 1,500 tokens (alone or after "Say hi."): the signal lands in it
    child.sendline(STORY)
    child.expect_exact("as you can.\r\n")  # the line echoed
    child.expect(r"\w+ \w+ \w+ \w+")  # the reply has begun
    child.sendintr()
    child.expect_exact("(reply cut)")
    child.expect_exact(PROMPT)
    saved = tmp_path / "cut.json"
    assert "Paris" in say(child, "What is the capital of France? One word.")
    say(child, f"/save {saved}")
    messages = [m for m in json.loads(saved.read_text()) if m["role"] != "system"]
    assert messages[1].get("cut") is True and messages[1]["content"]  # the cut reply stayed, marked
    assert "cut" not in messages[3]
    child.sendintr()  # at an empty prompt: leave, with 0
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_multi_line_messages(env, tmp_path):
    child = spawn(env)
    child.sendline("Repeat after me: \\")
    child.expect_exact("... ")
    child.sendline("blue sky")
    child.expect_exact(PROMPT)
    child.sendline('"""')
    child.expect_exact("... ")
    child.sendline("Say hello.")
    child.expect_exact("... ")
    child.sendline("Then say goodbye.")
    child.expect_exact("... ")
    child.sendline('"""')
    child.expect_exact(PROMPT)
    saved = tmp_path / "lines.json"
    say(child, f"/save {saved}")
    users = [m["content"] for m in json.loads(saved.read_text()) if m["role"] == "user"]
    assert users == ["Repeat after me: \nblue sky", "Say hello.\nThen say goodbye."]
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_piped_three_lines_give_three_replies(env):
    lines = "Hello!\nWhat is two plus two?\nSay goodbye.\n"
    result = subprocess.run([lmgen_exe(), "chat", "-n", "16"], input=lines.encode(), capture_output=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    replies = result.stdout.decode().splitlines()
    assert len(replies) == 3 and all(replies)
    result = subprocess.run([lmgen_exe(), "chat", "-n", "16", "--jsonl"], input=lines.encode(), capture_output=True,
                            env=env, timeout=300)
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["turn"] for r in records] == [1, 2, 3]
    assert [r["prompt"] for r in records] == lines.splitlines()
    assert records[2]["reused_tokens"] > records[1]["prompt_tokens"] - 5  # the earlier turns were not prefilled again


def test_a_model_without_a_chat_template_names_generate(tiny_dir, env):
    result = subprocess.run([lmgen_exe(), "chat", "-m", str(tiny_dir)], input=b"hi\n", capture_output=True,
                            env=env, timeout=300)
    err = result.stderr.decode()
    assert result.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "no chat template" in err and "lmgen generate" in err


def test_a_bad_command_file_is_one_error_line_and_the_session_goes_on(env, tmp_path):
    lines = f"/load {tmp_path / 'missing.json'}\n/save {tmp_path / 'no' / 'such' / 'dir.json'}\n/frobnicate\nHello!\n"
    result = subprocess.run([lmgen_exe(), "chat", "-n", "8"], input=lines.encode(), capture_output=True, env=env,
                            timeout=300)
    assert result.returncode == 0
    err = result.stderr.decode()
    assert err.count("lmgen: error:") == 2 and "unknown command /frobnicate" in err
    assert len(result.stdout.decode().splitlines()) == 1  # the one reply


# ------------------------------------------------ input that cannot be used: one line, the session goes on


def test_a_piped_line_that_is_not_utf8_is_named_and_the_session_goes_on(cli, tiny_chat_dir):
    result = cli("chat", "-m", str(tiny_chat_dir), "-n", "3", input=b"hi\n\xff there\nbye\n")
    assert result.returncode == 2
    replies = result.stdout.decode().split("\n")
    assert len(replies) == 4 and replies[1] == "" and replies[3] == ""  # three answers, the second empty
    err = result.stderr.decode().splitlines()
    assert err == ["lmgen: error: stdin line 2: not valid UTF-8",
                   "lmgen: error: 1 message(s) could not be answered (each named above)"]


def test_a_line_longer_than_the_context_is_named_and_the_session_goes_on(cli, tiny_chat_dir):
    long = b"word " * 200
    result = cli("chat", "-m", str(tiny_chat_dir), "-n", "3", "--jsonl", input=b"hi\n" + long + b"\nbye\n")
    assert result.returncode == 2
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("turn") for r in records] == [1, None, 2] and records[1]["line"] == 2
    assert "--truncate" not in records[1]["error"]  # chat has no such option
    assert b"stdin line 2: the message has" in result.stderr


def test_a_large_max_new_tokens_shortens_the_reply_not_the_memory(cli, tiny_chat_dir):
    """-n 8192 once dropped every earlier exchange, for want of room for 8192 new tokens."""
    result = cli("chat", "-m", str(tiny_chat_dir), "-n", "8192", "--jsonl", input=b"My name is Bob.\nWhat is my name?\n")
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert b"dropped" not in result.stderr
    assert second["reused_tokens"] >= first["prompt_tokens"]  # the first exchange is still in the prompt


def test_chat_with_stdin_closed_is_one_line(tiny_chat_dir, lmgen_exe):
    result = subprocess.run([lmgen_exe, "chat", "-m", str(tiny_chat_dir)], capture_output=True,
                            preexec_fn=lambda: os.close(0))
    assert result.returncode == 2, result.stderr
    assert result.stderr.decode() == "lmgen: error: chat reads messages from stdin, and stdin is closed\n"


def test_stats_never_reports_a_reply_that_was_cut_or_undone(env):
    child = spawn(env, "-n", "1500")  # the story runs on past 1,500 tokens (alone or after "Say hi."): the signal lands in it
    say(child, "Say hi.")
    assert "time to first token" in say(child, "/stats")
    child.sendline(STORY)
    child.expect_exact("as you can.\r\n")
    child.expect(r"\w+ \w+ \w+ \w+")
    child.sendintr()
    child.expect_exact("(reply cut)")
    child.expect_exact(PROMPT)
    assert say(child, "/stats") == "(the last reply was cut: no timings)"  # not the reply before it
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def test_stats_after_undo_is_not_the_removed_reply(cli, tiny_chat_dir):
    result = cli("chat", "-m", str(tiny_chat_dir), "-n", "3", input=b"hi\n/stats\n/undo\n/stats\n")
    notes = result.stderr.decode().splitlines()
    assert "time to first token" in notes[0]
    assert notes[1:] == ["(dropped the last exchange)", "(the last reply was undone: no reply since)"]


def test_stats_divide_the_prefill_time_by_the_tokens_prefilled(cli, tiny_chat_dir):
    """A later turn reuses the cache: its prompt rate is the tokens prefilled (not the whole
    prompt, most of it reused) over the time to first token, in the record and in /stats."""
    result = cli("chat", "-m", str(tiny_chat_dir), "-n", "3", "--jsonl", input=b"hello there\nand again\n")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2 and records[1]["reused_tokens"] > 0
    for r in records:
        assert r["prefilled_tokens"] == r["prompt_tokens"] - r["reused_tokens"] > 0
        assert r["prefill_tokens_per_s"] == pytest.approx(r["prefilled_tokens"] / r["time_to_first_token_s"], rel=1e-3)
