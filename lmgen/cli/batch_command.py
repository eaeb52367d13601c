"""``lmgen batch``: parse the options, then run the job here or on Ray (lmgen.cli.batch_job, batch_ray)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from lmgen.cli.app import app
from lmgen.cli.common import load_model, prepare
from lmgen.cli.options import (
    DEVICE_OPTION,
    DTYPE_OPTION,
    KV_CACHE_OPTION,
    KV_DTYPE_OPTION,
    MODEL_OPTION,
    SEED,
    THREADS_OPTION,
    kv_cache_mib,
    with_sampling,
)


@app.command()
@with_sampling
def batch(
    input: Path = typer.Argument(..., metavar="INPUT", help="Prompts: a text file (one per line) or JSONL ({\"id\", \"prompt\", ...})."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory of JSONL part files (a rerun resumes it)."),
    model: Optional[str] = MODEL_OPTION,
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Stop after this many new tokens."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop before this text (repeatable)."),
    sampling=None,  # the sampling options (with_sampling)
    seed: Optional[int] = SEED,
    truncate: bool = typer.Option(False, "--truncate", help="Keep the end of a prompt too long for the context."),
    chat: bool = typer.Option(False, "--chat", help="Wrap each prompt in the model's chat template."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for --chat (a record's own wins)."),
    json_schema: Optional[str] = typer.Option(None, "--json-schema", help="Output JSON this schema accepts."),
    regex: Optional[str] = typer.Option(None, "--regex", help="Output text this regular expression matches."),
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="Output text this Lark grammar accepts."),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts decoded together (per actor with --ray)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray: local, auto, or a cluster's address."),
    actors: Optional[int] = typer.Option(None, "--actors", help="With --ray: model replicas (default: one per CPU)."),
    verbose: bool = typer.Option(False, "--verbose", help="With --ray: show Ray's own logs on stderr."),
    dtype: str = DTYPE_OPTION,
    kv_dtype: Optional[str] = KV_DTYPE_OPTION,
    kv_cache: int = KV_CACHE_OPTION,
    device: str = DEVICE_OPTION,
    threads: Optional[int] = THREADS_OPTION,
) -> None:
    """Complete every prompt of INPUT into JSONL records in OUT, resumably (here, or on Ray)."""
    import dataclasses

    from lmgen.cli.batch_job import (
        Job,
        Written,
        check_input,
        done_ids,
        fingerprint,
        finish,
        lock_out,
        pending,
        prepare_out,
        read_all,
        run_here,
    )
    from lmgen.engine.constraint import Constraint
    from lmgen.engine.generation import GenerationSettings
    from lmgen.engine.load import parse_kv_dtype

    constraint = Constraint.from_options(json_schema, regex, None if grammar is None else str(grammar))
    settings = GenerationSettings(max_new_tokens=max_new_tokens, sampling=sampling, seed=seed, truncate=truncate,
                                  stop=tuple(stop or ()), constraint=constraint)
    from lmgen.errors import InputError

    from lmgen.engine.settings import MAX_ROWS

    if not 1 <= batch_size <= MAX_ROWS:
        raise InputError(f"batch-size must be from 1 to {MAX_ROWS}, got {batch_size}")
    budget = kv_cache_mib(kv_cache)  # (a memory budget: the records are the same whatever it is)
    if actors is not None and actors < 1:  # checked before DIR is made or Ray started
        raise InputError(f"actors must be >= 1, got {actors}")
    check_input(input)
    path, config = prepare(model, dtype, device, threads)
    # The whole input checked before DIR is made or a prompt generated (each line within what
    # the context could use, unless --truncate keeps a long prompt's end).
    every = read_all(input, seed, None if truncate else config.max_context)
    job = Job(str(input.resolve()), fingerprint(Path(path)), dtype, dataclasses.asdict(settings), chat, system,
              parse_kv_dtype(kv_dtype) and kv_dtype)
    prepare_out(out, job)
    held = lock_out(out)  # until the job is done (or this process ends)
    records, skipped = pending(every, out)
    if skipped:
        sys.stderr.write(f"lmgen: {skipped} record(s) already in {out}; {len(records)} to go\n")
    start, written = time.perf_counter(), Written()
    try:
        if records and ray is not None:
            from lmgen.cli.batch_ray import run_on_ray

            run_on_ray(ray, records, out, str(path), dtype, settings, batch_size, chat, system, actors, written, verbose,
                       kv_dtype, budget)
        elif records:
            lm = load_model(path, dtype, device, kv_dtype)
            run_here(lm, records, out, settings, batch_size, chat, system, written, budget)
    except KeyboardInterrupt:  # Ctrl-C: what is kept, and how to go on (exit 130)
        sys.stderr.write(f"lmgen: interrupted: {len(done_ids(out))} of {len(every)} record(s) kept in {out} "
                         f"({written.records} from this run); run the same command again to resume\n")
        raise
    summary = finish(out, written.records, skipped, time.perf_counter() - start, written.tokens)
    sys.stderr.write(f"lmgen: {summary['records_written']} record(s) written to {out} in {summary['seconds']:.1f} s "
                     f"({summary['tokens_per_s']:.1f} tokens/s); {summary['records_total']} in all\n")
    held.close()
