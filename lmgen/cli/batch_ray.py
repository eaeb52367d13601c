"""``lmgen batch --ray ADDRESS``: the same records, made by a Ray Data pipeline.

    from_items(records) → map_batches(Completer, compute=ActorPoolStrategy(size=actors),
                                       num_cpus=…, batch_size=…) → write_json(DIR)

Each actor loads the model once (``Completer``) and runs ``lmgen.complete`` on its batches with
the batched engine; Ray restarts failed actors and streams batches with backpressure. The driver
reads the input once (validating it, and leaving out the ids DIR already holds); part files are
Ray's, JSON lines like ours, and the records carry their ids, so order does not matter.

Sizing, from the cluster's resources: one actor per CPU (``--actors`` to choose), each reserving
a little less than its share of the CPUs so that Ray's read and write tasks are never starved
(actors at a whole CPU each on a 2-CPU node leave none, and the job hangs), and each computing
with as many threads as its share of a node's cores (never more, so that actors on one node do
not oversubscribe it). Ray is the optional extra ``lmgen[ray]``, imported only here.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from lmgen.errors import EnvironmentFailure, InputError

RESERVED_CPU = 0.5  # left on the cluster for Ray's own read and write tasks


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EnvironmentFailure('--ray needs Ray Data: pip install "lmgen[ray]"') from None
    return ray


class Completer:
    """A Ray actor: the model loaded once, then the records of each batch of input records."""

    def __init__(self, model: str, dtype: str | None, settings, batch_size: int, chat: bool, system: str | None,
                 threads: int, kv_dtype: str | None = None, kv_cache_mib: float | None = None):
        from lmgen.engine.load import load

        # resolved already: a path, never a name again
        self.lm = load(Path(model), dtype=dtype, threads=threads, kv_dtype=kv_dtype)
        self.settings, self.batch_size, self.chat, self.system = settings, batch_size, chat, system
        self.kv_cache_mib = kv_cache_mib

    def __call__(self, batch):
        import json

        import pandas as pd

        from lmgen.engine.completion import complete

        items = [json.loads(text) for text in batch["record"]]  # as JSON text: no column types to guess
        return pd.DataFrame(list(complete(self.lm, items, self.settings, self.batch_size, self.chat, self.system,
                                          self.kv_cache_mib)))


def connect(address: str, verbose: bool = False):
    """ray.init for ``--ray``: ``local`` starts a cluster in this process, ``auto`` joins the one
    on this machine (``ray start --head``), anything else is a cluster's address — checked to
    answer within CONNECT_SECONDS first (Ray itself retries for minutes). Ray's own logs (a
    dozen INFO lines per job, notes from its C++ core) stay in Ray's files unless ``verbose``."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    if address not in ("local", "auto"):
        _reachable(address)
    kwargs = dict(include_dashboard=False, log_to_driver=verbose, configure_logging=verbose)
    try:
        ray.init(address=None if address == "local" else address, **kwargs)
    except ValueError as exc:
        raise InputError(f"--ray {address}: {exc}") from None
    except ConnectionError as exc:
        raise EnvironmentFailure(f"--ray {address}: {exc}") from None
    return ray


@contextmanager
def logs_to(path: Path | None):
    """Everything written to file descriptor 2 (Ray's Python loggers, its C++ core, its workers'
    output) goes to ``path`` for the duration, not the terminal; None: left alone (--verbose)."""
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


CONNECT_SECONDS = 5


def _reachable(address: str) -> None:
    """A cluster's address (``HOST:PORT`` or ``ray://HOST:PORT``) that accepts a connection."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray {address}: give local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise EnvironmentFailure(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


def sizes(ray, actors: int | None) -> tuple[int, float, int]:
    """(actors, CPUs each reserves, threads each computes with) from the cluster's resources."""
    cpus = ray.cluster_resources().get("CPU", 1.0)
    nodes = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    actors = max(1, int(cpus)) if actors is None else actors
    per_actor = max(0.1, min(1.0, (cpus - RESERVED_CPU) / actors))
    threads = max(1, int(cpus / nodes) // max(1, math.ceil(actors / nodes)))
    return actors, round(per_actor, 3), threads


def run_on_ray(address: str, records: list[dict], out: Path, model: str, dtype: str | None, settings,
               batch_size: int, chat: bool, system: str | None, actors: int | None, written,
               verbose: bool = False, kv_dtype: str | None = None, kv_cache_mib: float | None = None) -> None:
    """Generate the records' completions on Ray into DIR, counting what its part files gained
    in ``written`` (batch.Written)."""
    if not records:
        return
    with logs_to(None if verbose else out / RAY_LOG):
        _run(connect(address, verbose), records, out, model, dtype, settings, batch_size, chat, system, actors, written,
             kv_dtype, kv_cache_mib)


RAY_LOG = "_ray.log"  # in DIR: what Ray wrote to stderr during the job (--verbose shows it instead)


def _run(ray, records, out, model, dtype, settings, batch_size, chat, system, actors, written, kv_dtype=None,
         kv_cache_mib=None) -> None:
    import json

    actors, per_actor, threads = sizes(ray, actors)
    before = {part.name for part in out.iterdir()}
    ds = ray.data.from_items([{"record": json.dumps(record)} for record in records])
    ds = ds.map_batches(Completer, fn_constructor_kwargs=dict(model=model, dtype=dtype, settings=settings,
                                                              batch_size=batch_size, chat=chat, system=system,
                                                              threads=threads, kv_dtype=kv_dtype,
                                                              kv_cache_mib=kv_cache_mib),
                        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=per_actor,
                        batch_size=batch_size, batch_format="pandas")
    ds.write_json(str(out))
    new = [part for part in out.iterdir() if part.name not in before and part.suffix == ".json"]
    lines = [line for part in new for line in part.read_text(encoding="utf-8").splitlines() if line.strip()]
    written.records += len(lines)
    written.tokens += sum(json.loads(line)["new_tokens"] for line in lines)
