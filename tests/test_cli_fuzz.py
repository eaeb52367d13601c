"""A seeded fuzzer of the command line's inputs, run in this process on a tiny model.

Random bytes and random text go where users' input goes: prompt arguments, stdin (whole, and line
by line), JSONL records for ``lmgen batch``, piped ``lmgen chat`` input, ``--json-schema``
values, regular expressions, option values, server URLs (``--server`` and $LMGEN_SERVER), the
values of every environment variable read per run, and special files (a FIFO, a device, a
directory) as every writer's target. Every outcome must be success or ``lmgen: error:``
lines with exit 2, 3 or 4: never exit 1 (a bug), never a traceback, never a hang (a FIFO is
refused, never opened). The seed is fixed;
LMGEN_CLI_FUZZ_ITERATIONS sets the number of cases (default 150; the long run used 5,000+).
"""

from __future__ import annotations

import collections
import json
import os
import random
from unittest import mock

from cli_harness import assert_clean_outcome, invoke

ITERATIONS = int(os.environ.get("LMGEN_CLI_FUZZ_ITERATIONS", "150"))
SEED = int(os.environ.get("LMGEN_CLI_FUZZ_SEED", "23"))
OPTIONS = ["-n", "--max-new-tokens", "-t", "--temperature", "--top-k", "--top-p", "--min-p", "--typical-p",
           "--repetition-penalty", "--frequency-penalty", "--presence-penalty", "--seed", "--num-samples",
           "--show-probs", "--batch-size", "--stop", "--threads", "--window", "--stride", "--kv-dtype"]
NUMBERS = ["0", "1", "-1", "2", "1e39", "-1e39", "1e-45", "nan", "inf", "-inf", "0.5", "3", "99999999999999999999",
           "", "x", "1e308", "-0", "4294967296", "18446744073709551616"]
SCHEMAS = ["true", "false", "{}", "[]", "null", "1", '"s"', '{"type": "string"}', '{"type": "object", "properties": '
           '{"a": {"type": "integer"}}, "required": ["a"]}', '{"enum": []}', '{"type": "number", "minimum": 5, '
           '"maximum": 1}', '{"type": ', '{"$ref": "#/nope"}', '{"type": "string", "pattern": "["}',
           '{"const": "\\ud800"}', '{"enum": ["a\\udfffb"]}', "[" * 5000 + "]" * 5000]
# Hosts here resolve at once (no DNS lookup) and nothing listens on port 9: a valid URL is refused
# by the connection (exit 4), an invalid one before it (exit 2).
URLS = ["notaurl", "http://exa mple.com", "http://127.0.0.1:9", "ftp://127.0.0.1", "http://", "http://[::1",
        "http://127.0.0.1:99999", "https://127.0.0.1:9/v1", "http://u@127.0.0.1:9", "http://127.0.0.1:9/?q=1",
        " http://127.0.0.1:9", "http://127.0.0.1:0", "http://127.0.0.1:9#x", "http://[::1]:9", "HTTP://127.0.0.1:9",
        "http://127.0.0.1:9\n", "http://127.0.0.1:-1", "http://\u00e9@127.0.0.1:9", "//127.0.0.1:9"]
REGEXES = ["a", "[^\\s\\S]", "(", "a{99999}", "\\", "[a-z]+", "(?i)x", "^$", ".*", "a|", "[", "\\p{L}+", "x{2,1}"]


def random_text(rng: random.Random, size: int) -> str:
    pools = ["abc XYZ \t\n", "é漢字🙂\u200b\u2028\ufeff", "".join(map(chr, range(32))), "{}[]\":,\\/"]
    if rng.random() < 0.3:  # any code point but lone surrogates
        return "".join(chr(rng.choice([rng.randrange(0xD800), rng.randrange(0xE000, 0x110000)])) for _ in range(size))
    return "".join(rng.choice(rng.choice(pools)) for _ in range(size))


def random_bytes(rng: random.Random, size: int) -> bytes:
    if rng.random() < 0.5:
        return random_text(rng, size).encode("utf-8", "surrogatepass")
    return bytes(rng.randrange(256) for _ in range(size))


def argument(rng: random.Random) -> str:
    """An argv entry as Python receives it: bytes that are not UTF-8 become lone surrogates (and
    none is NUL: a C string ends there)."""
    return os.fsdecode(random_bytes(rng, rng.randrange(0, 40)).replace(b"\0", b""))


def options(rng: random.Random, count: int) -> list[str]:
    out = []
    for _ in range(count):
        out += [rng.choice(OPTIONS), rng.choice(NUMBERS) if rng.random() < 0.8 else argument(rng)]
    return out


def json_record(rng: random.Random) -> bytes:
    record = {"id": rng.choice([1, "a", 1.0, None, [1], True, 2**70, random_text(rng, 3)]),
              "prompt": rng.choice([random_text(rng, rng.randrange(0, 20)), [], [1, 2, 3], [{"role": "user",
                                    "content": "hi"}], {"a": 1}, 5, [300, -1], "a\ud800", [{"role": "user",
                                    "content": "\udfff"}]]),
              "max_new_tokens": rng.choice([1, 0, -1, "2", 2.5, None, 3]),
              "seed": rng.choice([0, -1, 2**64, "1", 7])}
    for key in rng.sample(list(record), rng.randrange(0, 3)):
        del record[key]
    if rng.random() < 0.05:  # nested far past any parser's recursion limit
        return b"[" * 100_000 + b"]" * 100_000
    text = json.dumps(record).encode()  # (a lone surrogate becomes its \u escape: valid JSON, no valid text)
    return text if rng.random() < 0.8 else random_bytes(rng, rng.randrange(1, 30))


def special_target(rng: random.Random, tmp) -> str:
    """A path that exists and is not a regular file (or, sometimes, a fresh one that is fine)."""
    fifo = tmp / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    (tmp / "dir").mkdir(exist_ok=True)
    link = tmp / "link-to-null"
    if not link.is_symlink():
        link.symlink_to("/dev/null")
    return rng.choice([str(fifo), "/dev/null", "/dev/zero", str(tmp / "dir"), str(link),
                       str(tmp / f"fresh{rng.randrange(10**9)}")])


def environment(rng: random.Random, tmp) -> dict[str, str]:
    """One variable lmgen reads per run, set to a value it may refuse (never a relative path:
    a run would create it in the working directory)."""
    name = rng.choice(["LMGEN_THREADS", "LMGEN_SPINNER_DELAY", "LMGEN_SERVER", "LMGEN_API_KEY", "LMGEN_MODEL",
                       "LMGEN_HOME"])
    if name in ("LMGEN_THREADS", "LMGEN_SPINNER_DELAY"):
        return {name: rng.choice(NUMBERS) if rng.random() < 0.8 else argument(rng)}
    if name == "LMGEN_SERVER":
        return {name: rng.choice(URLS) if rng.random() < 0.8 else argument(rng)}
    if name == "LMGEN_API_KEY":
        return {name: argument(rng), "LMGEN_SERVER": "http://127.0.0.1:9"}
    paths = [special_target(rng, tmp), "", str(tmp / "missing" / "x"), str(tmp / argument(rng).replace("/", "_"))]
    return {name: rng.choice(paths).replace("\0", "")}


def case(rng: random.Random, tiny: str, chat_dir: str, tmp) -> tuple[tuple, bytes | None, bool, dict]:
    """(argv, stdin, whether several error lines are allowed, environment) for one case."""
    kind = rng.choice(["prompt", "stdin", "each-line", "score", "batch", "chat", "schema", "regex", "options",
                       "url", "environment", "target"])
    n = ["-n", str(rng.randrange(1, 4))]
    if kind == "url":
        url = rng.choice(URLS) if rng.random() < 0.8 else argument(rng)
        command = rng.choice(["generate", "chat"])
        return (command, "--server", url, *n, *(["hi"] if command == "generate" else [])), b"hi\n", False, {}
    if kind == "environment":
        env = environment(rng, tmp)
        model = [] if "LMGEN_MODEL" in env or "LMGEN_SERVER" in env else ["-m", tiny]
        command = rng.choice(["generate", "score"])
        return (command, *model, *(n if command == "generate" else []), "hi"), b"", False, env
    if kind == "target":
        target = special_target(rng, tmp)
        return rng.choice([
            ("quantize", tiny, target, "--type", "q8_0", *rng.choice([[], ["--force"]])),
            ("batch", str(tmp / "one.txt"), "--out", target, "-m", tiny, *n),
            ("chat", "-m", chat_dir, *n),
        ]), f"hi\n/save {target}\n".encode(), True, {"LMGEN_CHAT_HISTORY": special_target(rng, tmp)}
    if kind == "prompt":
        return ("generate", "-m", tiny, *n, argument(rng)), b"", False, {}
    if kind == "stdin":
        return ("generate", "-m", tiny, *n), random_bytes(rng, rng.randrange(0, 200)), False, {}
    if kind == "each-line":
        lines = b"\n".join(random_bytes(rng, rng.randrange(0, 30)) for _ in range(rng.randrange(0, 6)))
        mode = rng.choice([[], ["--json"], ["--jsonl"], ["--truncate"]])
        return ("generate", "-m", tiny, "--each-line", *n, *mode), lines, False, {}
    if kind == "score":
        return ("score", "-m", tiny, argument(rng)), b"", False, {}
    if kind == "batch":
        src = tmp / f"in{rng.randrange(10**9)}{rng.choice(['.jsonl', '.txt'])}"
        src.write_bytes(b"\n".join(json_record(rng) for _ in range(rng.randrange(1, 5))) + b"\n")
        return ("batch", str(src), "--out", str(tmp / f"out{rng.randrange(10**9)}"), "-m", tiny, *n), b"", False, {}
    if kind == "chat":
        lines = b"\n".join(random_bytes(rng, rng.randrange(0, 30)) for _ in range(rng.randrange(1, 4)))
        return ("chat", "-m", chat_dir, *n, *rng.choice([[], ["--jsonl"]])), lines, True, {}
    if kind == "schema":
        schema = rng.choice(SCHEMAS) if rng.random() < 0.7 else argument(rng)
        return ("generate", "-m", tiny, *n, "--json-schema", schema, "hi"), b"", False, {}
    if kind == "regex":
        pattern = rng.choice(REGEXES) if rng.random() < 0.7 else argument(rng)
        return ("generate", "-m", tiny, *n, "--regex", pattern, "hi"), b"", False, {}
    command = rng.choice(["generate", "score"])
    return (command, "-m", tiny, *options(rng, rng.randrange(1, 4)), "Hello"), b"", False, {}


def test_fuzzed_cli_inputs_end_in_success_or_one_error_line(tiny_dir, tiny_chat_dir, tmp_path):
    rng = random.Random(SEED)
    outcomes = collections.Counter()
    (tmp_path / "one.txt").write_text("hello\n")
    for i in range(ITERATIONS):
        args, stdin, several, env = case(rng, str(tiny_dir), str(tiny_chat_dir), tmp_path)
        with mock.patch.dict(os.environ, env):
            result = invoke(*args, stdin=stdin)
        try:
            assert_clean_outcome(result, one_error=not several)
        except AssertionError:
            raise AssertionError(f"case {i}: {env} lmgen {args!r} < {stdin!r}:\n{result.stderr.decode(errors='replace')}")
        outcomes[(args[0], result.returncode)] += 1
    print(f"cli fuzz: {ITERATIONS} cases: {dict(outcomes)}")
    assert sum(count for (_, code), count in outcomes.items() if code == 0) > ITERATIONS // 10  # not all refused
