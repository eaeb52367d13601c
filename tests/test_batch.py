"""`lmgen batch` (lmgen.cli.batch_job, lmgen.complete, lmgen.cli.batch_ray): the records of --each-line,
resumable, here or on Ray."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error

import lmgen
from lmgen.engine.completion import complete
from lmgen.engine.generation import GenerationSettings

TIMING = ("time_to_first_token_s", "decode_s", "prefill_tokens_per_s", "decode_tokens_per_s", "weights_gb_per_s")
SUBJECTS = ["the sea", "a cat", "Paris", "winter", "bread", "a violin", "the moon", "rivers", "chess", "tea"]
PROMPTS = [f"{n}. A short sentence about {SUBJECTS[n % 10]}:" for n in range(40)]


def lmgen_exe() -> str:
    return str(Path(sys.executable).parent / "lmgen")


def run(*args, input: bytes | None = None, env=None):
    return subprocess.run([lmgen_exe(), *args], capture_output=True, input=input, timeout=300,
                          env={**os.environ, **(env or {})})


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def read_out(out: Path) -> dict:
    """id → record, from every part file (ours and Ray's)."""
    records = {}
    for part in out.iterdir():
        if part.suffix in (".jsonl", ".json") and not part.name.startswith(("_", ".")):
            for line in part.read_text().splitlines():
                record = json.loads(line)
                assert record["id"] not in records, "an id written twice"
                records[record["id"]] = record
    return records


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


@pytest.fixture(scope="module")
def each_line(inputs):
    """What `generate --each-line --json` prints for the same prompts: the reference records."""
    result = run("generate", "--each-line", "--json", "-n", "12", input=(inputs / "prompts.txt").read_bytes())
    assert result.returncode == 0, result.stderr
    return [without_timing(json.loads(line)) for line in result.stdout.decode().splitlines()]


def test_batch_gives_the_records_of_each_line_and_resumes(inputs, each_line, tmp_path):
    out = tmp_path / "out"
    first = run("batch", str(inputs / "prompts.txt"), "--out", str(out), "-n", "12")
    assert first.returncode == 0, first.stderr
    records = read_out(out)
    assert sorted(records) == list(range(1, 41))  # ids: line numbers
    assert [without_timing({k: v for k, v in records[i].items() if k != "id"}) for i in range(1, 41)] == each_line
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["settings"]["max_new_tokens"] == 12 and len(manifest["model"]) == 32
    assert json.loads((out / "_SUCCESS").read_text())["records_written"] == 40

    part = out / "part-00000.jsonl"  # lose 7 records, and cut the last line short, as a crash would
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:30]) + lines[30][:25])
    again = run("batch", str(inputs / "prompts.txt"), "--out", str(out), "-n", "12")
    assert again.returncode == 0, again.stderr
    assert "30 record(s) already" in again.stderr.decode()
    assert json.loads((out / "_SUCCESS").read_text())["records_written"] == 10
    assert {k: without_timing(v) for k, v in read_out(out).items()} == {k: without_timing(v) for k, v in records.items()}

    other = run("batch", str(inputs / "prompts.txt"), "--out", str(out), "-n", "13")
    assert_one_line_error(other, 2, r"other settings \(settings\.max_new_tokens: 12 then, 13 now\)")


def test_a_small_kv_cache_gives_the_same_records_and_is_no_setting_of_the_job(inputs, each_line, tmp_path):
    """--kv-cache-mib 3 holds about 4 pages of 16 positions: 8 rows of ~22 positions take turns
    (preempted and resumed), and every record is what an unbounded cache gives."""
    out = tmp_path / "out"
    first = run("batch", str(inputs / "prompts.txt"), "--out", str(out), "-n", "12", "--kv-cache-mib", "3")
    assert first.returncode == 0, first.stderr
    records = read_out(out)
    assert [without_timing({k: v for k, v in records[i].items() if k != "id"}) for i in range(1, 41)] == each_line
    again = run("batch", str(inputs / "prompts.txt"), "--out", str(out), "-n", "12", "--kv-cache-mib", "64")
    assert again.returncode == 0 and "40 record(s) already" in again.stderr.decode()  # a memory budget, not a setting
    generated = run("generate", "--each-line", "--json", "-n", "12", "--kv-cache-mib", "3",
                    input=(inputs / "prompts.txt").read_bytes())
    assert [without_timing(json.loads(line)) for line in generated.stdout.decode().splitlines()] == each_line
    assert_one_line_error(run("batch", str(inputs / "prompts.txt"), "--out", str(tmp_path / "o2"), "--kv-cache-mib",
                              "-1"), 2, "kv-cache-mib must be from 0")


def test_jsonl_input_with_ids_and_fields_of_its_own(tmp_path, default_lm):
    rows = [{"id": "a", "prompt": "The sea is"}, {"id": "b", "prompt": "Hello", "max_new_tokens": 3},
            {"id": "c", "prompt": "Say hi.", "system": "You are brief.", "seed": 5}]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    result = run("batch", str(src), "--out", str(tmp_path / "out"), "-n", "6")
    assert result.returncode == 0, result.stderr
    records = read_out(tmp_path / "out")
    assert sorted(records) == ["a", "b", "c"]
    assert records["b"]["new_tokens"] <= 3 and records["a"]["new_tokens"] <= 6
    assert records["c"]["prompt"] == "Say hi."  # the user's text; what the template made of it beside
    assert records["c"]["rendered_prompt"].startswith("<|im_start|>system\nYou are brief.")
    library = list(complete(default_lm, rows, GenerationSettings(max_new_tokens=6)))
    assert [without_timing(r) for r in library] == [without_timing(records[k]) for k in "abc"]


@pytest.fixture(scope="module")
def default_lm():
    from lmgen.formats.paths import resolve_model

    return lmgen.load(resolve_model(None), threads=1)


@pytest.mark.parametrize("content, pattern", [
    ('{"id": 1, "prompt": "a"}\nnot json\n', r"in.jsonl:2 is not valid JSON"),
    ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', r"the id 1 appears twice"),
    ('{"id": 1}\n', r'has no "prompt"'),
    ('{"id": 1, "prompt": "a", "max_new_tokens": "many"}\n', r"'max_new_tokens' must be int"),
    ('[1, 2]\n', r"must be a JSON object"),
    ('{"id": "huge", "prompt": "' + "word " * 9000 + '"}\n', r"prompt \"huge\": the prompt has 9001 tokens .*--truncate"),
])
def test_bad_input_records_are_one_line_and_exit_2(tmp_path, content, pattern):
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    assert_one_line_error(run("batch", str(src), "--out", str(tmp_path / "out")), 2, pattern)


@pytest.mark.parametrize("name, pattern", [("missing.txt", "does not exist"), ("/dev/null", "not a regular file")])
def test_a_missing_or_special_input_is_refused_before_the_output_is_made(tmp_path, name, pattern):
    result = run("batch", str(tmp_path / name), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, 2, pattern)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, pattern", [(["--actors", "0"], "actors must be >= 1"),
                                             (["--batch-size", "0"], "batch-size must be from 1 to 65536"),
                                             (["--batch-size", str(2**64)], "batch-size must be from 1 to 65536")])
def test_bad_counts_are_refused_before_the_output_is_made(tmp_path, inputs, option, pattern):
    result = run("batch", str(inputs / "prompts.txt"), "--out", str(tmp_path / "out"), *option)
    assert_one_line_error(result, 2, pattern)
    assert not (tmp_path / "out").exists()


def test_an_output_directory_that_is_not_a_batchs_is_refused(tmp_path, inputs):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert_one_line_error(run("batch", str(inputs / "prompts.txt"), "--out", str(tmp_path / "out")), 2, "not empty")


def test_without_ray_the_error_names_the_extra(tmp_path, inputs):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    result = run("batch", str(inputs / "prompts.txt"), "--out", str(tmp_path / "out"), "--ray", "local",
                 env={"PYTHONPATH": str(hide)})
    assert_one_line_error(result, 4, r'pip install "lmgen\[ray\]"')


def test_on_a_local_ray_cluster_two_actors_give_the_same_records(inputs, each_line, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (the lmgen[ray] extra)")
    out = tmp_path / "ray"
    result = run("batch", str(inputs / "prompts.txt"), "--out", str(out), "-n", "12", "--ray", "local",
                 "--actors", "2", "--batch-size", "8")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    lines = result.stderr.decode().splitlines()  # Ray's own ~20 lines of logs are kept in DIR/_ray.log
    assert len(lines) == 1 and lines[0].startswith("lmgen: 40 record(s) written"), lines
    assert (out / "_ray.log").is_file()
    records = read_out(out)
    assert sorted(records) == list(range(1, 41))
    assert [without_timing({k: v for k, v in records[i].items() if k != "id"}) for i in range(1, 41)] == each_line


@pytest.mark.parametrize("address, code, pattern", [
    ("nonsense", 2, r"--ray nonsense: give local, auto, HOST:PORT"),
    ("127.0.0.1:9", 4, r"no Ray cluster answers there"),  # refused at once, not Ray's minutes of retries
])
def test_a_bad_ray_address_is_one_line_not_a_hang(tmp_path, inputs, address, code, pattern):
    pytest.importorskip("ray", reason="Ray is not installed (the lmgen[ray] extra)")
    result = run("batch", str(inputs / "prompts.txt"), "--out", str(tmp_path / "out"), "--ray", address)
    assert_one_line_error(result, code, pattern)


# ---------------------------------------------- ids, bad lines, counts (issue: every prompt, one record)


@pytest.mark.parametrize("ident", ["1.0", "true", "[1]", '{"a": 1}', "null"])
def test_an_id_that_is_not_a_string_or_integer_is_refused_on_every_run(tiny_dir, cli, tmp_path, ident):
    """1.0 == 1 in Python: a float id was once refused, then skipped as done on the rerun."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out"
    src.write_text(f'{{"id": 1, "prompt": "a"}}\n{{"id": {ident}, "prompt": "b"}}\n')
    for _ in range(2):
        result = cli("batch", str(src), "--out", str(out), "-m", str(tiny_dir), "-n", "2")
        assert_one_line_error(result, 2, r"in.jsonl:2: field 'id' must be str or int")
        assert not out.exists()  # the whole input is checked before DIR is made


def test_a_corrupt_part_file_line_is_named_on_resume(tiny_dir, cli, tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_text("a\nb\nc\n")
    args = ["batch", str(src), "--out", str(out), "-m", str(tiny_dir), "-n", "2"]
    assert cli(*args).returncode == 0
    part = next(out.glob("part-*"))
    lines = part.read_text().splitlines(keepends=True)
    part.write_text(lines[0] + "{not json\n" + lines[2])
    assert_one_line_error(cli(*args), 2, r"part-00000.jsonl:2 is not a record lmgen wrote")


@pytest.mark.parametrize("bad, pattern", [
    ('{"id": 9, "prompt": []}', r"in.jsonl:2: the prompt is empty"),
    ('{"id": 9, "prompt": ""}', r"in.jsonl:2: the prompt is empty"),
    ('{"id": 9, "prompt": [{"role": 1}]}', r"in.jsonl:2: messages must be"),
    ('{"id": 9, "prompt": "b", "seed": true}', r"in.jsonl:2: field 'seed' must be int"),
    ('{"id": 9, "prompt": "b", "max_new_tokens": 0}', r"in.jsonl:2: max_new_tokens must be >= 1"),
])
def test_a_bad_record_anywhere_is_refused_before_any_work(tiny_dir, cli, tmp_path, bad, pattern):
    src, out = tmp_path / "in.jsonl", tmp_path / "out"
    src.write_text('{"id": 1, "prompt": "a"}\n' + bad + '\n{"id": 3, "prompt": "c"}\n')
    assert_one_line_error(cli("batch", str(src), "--out", str(out), "-m", str(tiny_dir)), 2, pattern)
    assert not out.exists()


def test_a_prompt_too_long_keeps_the_records_before_it(tiny_dir, cli, tmp_path):
    """Known only once tokenized: the records before it are written and flushed, then one error
    names its id; a rerun after fixing it makes only what is missing."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out"
    records = [{"id": i, "prompt": "x" * (500 if i == 5 else 3)} for i in range(8)]
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["batch", str(src), "--out", str(out), "-m", str(tiny_dir), "-n", "1", "--batch-size", "3"]
    assert_one_line_error(cli(*args), 2, r"prompt 5: the prompt has \d+ tokens")
    assert sorted(read_out(out)) == [0, 1, 2, 3, 4]
    assert not (out / "_SUCCESS").exists()
    records[5]["prompt"] = "fixed"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert cli(*args).returncode == 0
    assert sorted(read_out(out)) == list(range(8))
    success = json.loads((out / "_SUCCESS").read_text())
    assert (success["records_written"], success["records_skipped"], success["records_total"]) == (3, 5, 8)


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tiny_dir, cli, tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_bytes(b"\xef\xbb\xbfHello\nWorld\n")
    assert cli("batch", str(src), "--out", str(out), "-m", str(tiny_dir), "-n", "1").returncode == 0
    assert read_out(out)[1]["prompt"] == "Hello"


def test_out_naming_a_file_is_bad_usage(tiny_dir, cli, tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "taken"
    src.write_text("a\n")
    out.write_text("mine")
    assert_one_line_error(cli("batch", str(src), "--out", str(out), "-m", str(tiny_dir)), 2, "is not a directory")
    assert out.read_text() == "mine"


def test_a_second_run_on_the_same_out_is_refused_naming_the_first(tiny_dir, cli, tmp_path):
    from lmgen.cli.batch_job import lock_out

    source, out = tmp_path / "in.txt", tmp_path / "out"
    source.write_text("one\ntwo\n")
    assert cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2").returncode == 0
    held = lock_out(out)  # another run holds DIR (an flock: another open file of this process counts too)
    try:
        result = cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2")
        assert_one_line_error(result, 2, rf"in use by another lmgen batch \(pid {os.getpid()}\)")
    finally:
        held.close()  # the holder ends: its lock goes with it, never stale
    assert cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2").returncode == 0


def test_an_edited_input_is_refused_naming_the_changed_record(tiny_dir, cli, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out"
    source.write_text('{"id": "a", "prompt": "one"}\n{"id": "b", "prompt": "two"}\n')
    assert cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2").returncode == 0
    source.write_text('{"id": "a", "prompt": "one, edited"}\n{"id": "b", "prompt": "two"}\n{"id": "c", "prompt": "3"}\n')
    result = cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2")
    assert_one_line_error(result, 2, r'record\(s\) "a" changed since')
    source.write_text('{"id": "a", "prompt": "one"}\n{"id": "b", "prompt": "two"}\n{"id": "c", "prompt": "3"}\n')
    assert cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2").returncode == 0  # added: fine
    assert sorted(read_out(out)) == ["a", "b", "c"] and read_out(out)["a"]["prompt"] == "one"


def test_a_manifest_left_half_written_does_not_block_the_rerun(tiny_dir, cli, tmp_path):
    source, out = tmp_path / "in.txt", tmp_path / "out"
    source.write_text("one\n")
    out.mkdir()
    (out / "._manifest.json.partial").write_text('{"inp')  # a full disk, or a kill, mid-write
    assert cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2").returncode == 0
    assert not (out / "._manifest.json.partial").exists() and len(read_out(out)) == 1


def test_other_settings_are_named_with_both_values(tiny_dir, cli, tmp_path):
    source, out = tmp_path / "in.txt", tmp_path / "out"
    source.write_text("one\n")
    assert cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2").returncode == 0
    result = cli("batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "3")
    assert_one_line_error(result, 2, r"other settings \(settings\.max_new_tokens: 2 then, 3 now\)")


def test_the_kv_cache_dtype_is_a_setting_of_the_job(tiny_dir, cli, tmp_path):
    """--kv-dtype is in the manifest when given (a rerun without it is refused, naming it), and
    absent otherwise, so a DIR made before the option existed still resumes."""
    source, out = tmp_path / "in.txt", tmp_path / "out"
    source.write_text("one\ntwo\n")
    args = ["batch", str(source), "--out", str(out), "-m", str(tiny_dir), "-n", "2"]
    assert cli(*args, "--kv-dtype", "bf16").returncode == 0
    assert json.loads((out / "_manifest.json").read_text())["kv_dtype"] == "bf16"
    assert_one_line_error(cli(*args), 2, r'other settings \(kv_dtype: "bf16" then, null now\)')
    plain = tmp_path / "plain"
    assert cli(*args[:3], str(plain), *args[4:]).returncode == 0
    assert "kv_dtype" not in json.loads((plain / "_manifest.json").read_text())
    source.write_text("one\ntwo\nthree\n")
    assert cli(*args[:3], str(plain), *args[4:]).returncode == 0  # resumes: one more record
    assert sum(p.read_text().count("\n") for p in plain.glob("part-*")) == 3
