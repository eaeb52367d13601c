"""``lmgen batch INPUT --out DIR``: many prompts from a file to JSONL part files, resumable.

INPUT is a text file (one prompt per non-blank line; a record's id is its line number) or JSONL
(``.jsonl``/``.json``: one ``{"id": …, "prompt": …}`` per line, with optional ``system``,
``max_new_tokens`` and ``seed``; a record without an id gets its line number). Every output
record is what ``generate --json`` prints (``lmgen.complete``) plus the input's ``id``, and
``index``, the prompt's 0-based line in the input, so that the records equal ``--each-line``'s.

DIR holds part files and ``_manifest.json``: the settings, the model's fingerprint and the
input, written by the first run. A rerun of the same command skips the ids already in DIR's
part files (an interrupted job goes on where it stopped); one with other settings or another
model is refused. ``_SUCCESS`` records the counts and timing of the run that finished the job.
Each prompt's sampling seed comes from ``--seed`` and its index (its line), so a record
is the same whichever run, process or Ray actor makes it. Runs in this process by default;
``batch_ray`` runs the same work as a Ray Data pipeline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lmgen.cli.prompts import max_line_bytes
from lmgen.errors import InputError, LmgenError
from lmgen.formats.files import not_special, regular_file, remove_dead_stages, staged_file
from lmgen.text.utf8 import BOM

MANIFEST, SUCCESS, INPUTS, LOCK = "_manifest.json", "_SUCCESS", "_inputs.json", ".lock"
PART_SUFFIXES = (".jsonl", ".json")  # ours, and Ray's write_json


@dataclasses.dataclass(frozen=True)
class Job:
    """What the records depend on: checked against DIR's manifest on every run."""

    input: str
    model: str  # its fingerprint
    dtype: str | None
    settings: dict  # GenerationSettings as a dict
    chat: bool
    system: str | None
    kv_dtype: str | None = None  # the KV cache's (left out of the manifest when not asked for)

    def describe(self) -> dict:
        """As JSON has it (tuples become lists), so that a manifest read back compares equal; a
        field added since (kv_dtype, sampling.logit_bias) appears only when set, so earlier DIRs
        still resume."""
        described = json.loads(json.dumps(dataclasses.asdict(self)))
        if described["kv_dtype"] is None:
            del described["kv_dtype"]
        sampling = described["settings"].get("sampling", {})
        if not sampling.get("logit_bias", True):
            del sampling["logit_bias"]
        return described


def check_input(path: Path) -> None:
    """INPUT is a regular file that exists (bad input: exit 2), before DIR is touched."""
    try:
        regular_file(path, "batch input")
    except LmgenError as exc:
        raise InputError(str(exc)) from None


def read_input(path: Path, seed: int | None, context: int | None = None) -> Iterator[dict]:
    """The input records, each checked (``completion.check_record``: an error names the file and
    line) and given its id (its line number unless it has one), its ``index`` (its 0-based line)
    and its seed (from ``seed`` and its index, unless it has one). Given the model's ``context``,
    a line longer than any prompt that fits could make is refused as it is read, not tokenized."""
    from lmgen.engine.batching import prompt_seed
    from lmgen.engine.completion import check_record

    check_input(path)
    jsonl = path.suffix in (".jsonl", ".json")
    limit = None if context is None else max_line_bytes(context, jsonl)
    with open(path, "rb") as stream:
        for number, raw in enumerate(_lines(stream, limit, path), 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise InputError(f"{path}:{number} is not valid UTF-8") from None
            if number == 1:
                line = line.removeprefix(BOM)  # a byte order mark is not part of the prompt
            if not line.strip():
                continue
            record = _json_line(line, path, number) if jsonl else {"prompt": line}
            record.setdefault("id", number)
            record["index"] = number - 1  # its 0-based line, as --each-line's records have it
            if "seed" not in record and seed is not None:
                record["seed"] = prompt_seed(seed, number - 1)
            try:
                check_record(record)
            except InputError as exc:
                raise InputError(f"{path}:{number}: {exc}") from None
            yield record


def _lines(stream, limit: int | None, path: Path) -> Iterator[bytes]:
    """The stream's lines, each read within ``limit`` bytes (None: unbounded)."""
    for number in itertools.count(1):
        raw = stream.readline(-1 if limit is None else limit + 1)
        if not raw:
            return
        if limit is not None and len(raw) > limit:
            raise InputError(f"{path}:{number} is longer than a prompt the model's context could use "
                             f"({limit:,} bytes); pass --truncate to keep a prompt's end")
        yield raw


def _json_line(line: str, path: Path, number: int) -> dict:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise InputError(f"{path}:{number} is not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{path}:{number} is nested too deep to be a record") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}:{number} must be a JSON object with a \"prompt\"")
    return record


def id_key(value) -> str:
    """An id as a key: its JSON text, so that 1 and "1" (or 1.0, never valid) stay apart."""
    return json.dumps(value, ensure_ascii=False)


def done_ids(out: Path) -> set[str]:
    """The keys (``id_key``) of the records DIR's part files hold (a last line cut short by a
    crash is dropped); a line that is not a record with a valid id is refused, naming it."""
    keys = set()
    for part in sorted(out.iterdir()) if out.is_dir() else ():
        if part.suffix not in PART_SUFFIXES or part.name.startswith(("_", ".")):
            continue
        try:
            regular_file(part, "a part file")  # a FIFO there would hang the rerun
        except LmgenError as exc:
            raise InputError(str(exc)) from None
        _drop_partial_line(part)
        with open(part, "rb") as stream:
            for number, line in enumerate(stream, 1):
                if line.strip():
                    keys.add(id_key(_written_id(line, part, number)))
    return keys


def _written_id(line: bytes, part: Path, number: int):
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    ident = record.get("id") if isinstance(record, dict) else None
    if not isinstance(ident, (str, int)) or isinstance(ident, bool):
        raise InputError(f"{part}:{number} is not a record lmgen wrote (no valid id); "
                         "remove that line, or the directory to start again")
    return ident


def _drop_partial_line(part: Path) -> None:
    data = part.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(part, "r+b") as stream:
            stream.truncate(data.rfind(b"\n") + 1)


def fingerprint(path: Path) -> str:
    """A model's identity, cheap even for large files: each file's name and size and 16 chunks of
    64 KiB spread over it (the config, tokenizer and weights of a directory; a GGUF file)."""
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".json", ".safetensors", ".gguf", ".toml") and p.is_file())
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as stream:
            for i in range(16):
                stream.seek(size * i // 16)
                digest.update(stream.read(1 << 16))
    return digest.hexdigest()[:32]


def prepare_out(out: Path, job: Job) -> None:
    """DIR made (with its manifest) on the first run; on later ones, the manifest must match.
    Staging files a run killed while writing left behind are removed first."""
    for name in (MANIFEST, SUCCESS, INPUTS) if out.is_dir() else ():
        remove_dead_stages(out / name)
        (out / f".{name}.partial").unlink(missing_ok=True)  # an earlier version's stage (no pid in it)
    for name in (MANIFEST, SUCCESS, INPUTS, LOCK):  # before any work: none may be a FIFO or a device
        not_special(out / name)
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            before = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError:
            before = None
        if before != job.describe():
            raise InputError(f"{out} holds records made with other settings ({_differences(before, job.describe())}); "
                             "use another --out, or remove it to start again")
        return
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is not a directory")
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):
        raise InputError(f"{out} is not empty and has no {MANIFEST}: not a batch output directory")
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(manifest, json.dumps(job.describe(), indent=1, ensure_ascii=False) + "\n")


def _differences(before, now: dict) -> str:
    """Each setting that differs, with the value DIR was made with and the value asked now."""
    if not isinstance(before, dict):
        return "its manifest is unreadable"
    before, now = _flat(before), _flat(now)
    shown = lambda value: json.dumps(value, ensure_ascii=False)[:80]  # noqa: E731
    return "; ".join(f"{k}: {shown(before.get(k))} then, {shown(now.get(k))} now" for k in sorted(set(before) | set(now))
                     if before.get(k) != now.get(k)) or "manifest"


def _flat(value: dict, prefix: str = "") -> dict:
    """{"settings": {"seed": 1}} as {"settings.seed": 1}."""
    out = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        out.update(_flat(item, name + ".") if isinstance(item, dict) else {name: item})
    return out


def lock_out(out: Path):
    """DIR locked for this run (an open file; the lock goes with the process, so a dead run's
    is never stale); a second run on it is refused, naming the first's pid."""
    import fcntl

    not_special(out / LOCK)
    handle = open(out / LOCK, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise InputError(f"{out} is in use by another lmgen batch (pid {holder}); wait for it to end, "
                         "or use another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def check_unchanged(records: list[dict], out: Path, done: set[str]) -> None:
    """Records already in DIR (``done``, their id keys) must come from the same input records as
    now (INPUTS keeps a digest of each, by id): an edited or moved line is refused, naming its
    id, never left stale."""
    path = out / INPUTS
    try:
        known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        known = {}
    now = {id_key(record["id"]): _digest(record) for record in records}
    changed = [key for key, digest in now.items() if key in done and known.get(key, digest) != digest]
    if changed:
        raise InputError(f"the input of record(s) {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} "
                         f"changed since {out} holds their output; use another --out, or remove it to start again")
    kept = {key: digest for key, digest in known.items() if key in done and key not in now}
    _write_atomic(path, json.dumps({**kept, **now}, ensure_ascii=False) + "\n")


def _digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _write_atomic(path: Path, text: str) -> None:
    """Written aside and renamed into place; never over anything but a regular file."""
    with staged_file(path, force=True, parents=False) as stage:
        stage.write_text(text, encoding="utf-8")


def new_part(out: Path) -> Path:
    taken = {p.name for p in out.iterdir()}
    return out / next(f"part-{n:05d}.jsonl" for n in range(len(taken) + 1) if f"part-{n:05d}.jsonl" not in taken)


def finish(out: Path, written: int, skipped: int, seconds: float, tokens: int) -> dict:
    """_SUCCESS: what this run wrote, and the job's total as DIR's part files hold it."""
    summary = {"records_written": written, "records_skipped": skipped, "records_total": len(done_ids(out)),
               "seconds": round(seconds, 3), "new_tokens": tokens,
               "tokens_per_s": round(tokens / seconds, 3) if seconds > 0 else 0.0}
    _write_atomic(out / SUCCESS, json.dumps(summary, indent=1) + "\n")
    return summary


@dataclasses.dataclass
class Written:
    """What a run wrote to DIR (counted as each record is flushed)."""

    records: int = 0
    tokens: int = 0


def run_here(lm, records: list[dict], out: Path, settings, batch_size: int, chat: bool, system: str | None,
             written: Written, kv_cache_mib: float | None = None) -> None:
    """Generate the records' completions in this process into a new part file, counting them in
    ``written`` as each is flushed (so that a run ended by an error still counts what it wrote)."""
    from lmgen.cli.startup import progress
    from lmgen.engine.completion import complete

    if not records:
        return
    with open(new_part(out), "a", encoding="utf-8") as part, progress(len(records)) as report:
        for record in complete(lm, records, settings, batch_size, chat, system, kv_cache_mib):
            part.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            part.flush()
            written.records += 1
            written.tokens += record["new_tokens"]
            report(record["new_tokens"])


def read_all(path: Path, seed: int | None, context: int | None = None) -> list[dict]:
    """Every input record, the whole file checked before any is generated (ids unique)."""
    records, seen = [], set()
    for record in read_input(path, seed, context):
        key = id_key(record["id"])
        if key in seen:
            raise InputError(f"{path}: the id {key} appears twice; ids name records in the output")
        seen.add(key)
        records.append(record)
    return records


def pending(records: list[dict], out: Path) -> tuple[list[dict], int]:
    """(the records not yet in DIR, how many are); an edited input is refused (check_unchanged)."""
    done = done_ids(out)  # (every part file read once)
    check_unchanged(records, out, done)
    todo = [record for record in records if id_key(record["id"]) not in done]
    return todo, len(records) - len(todo)

