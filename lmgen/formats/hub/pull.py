"""A Hub reference's files, in the Hugging Face cache: found there with no request, else fetched
with ``huggingface_hub`` (its cache layout, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_ENDPOINT``,
``HF_TOKEN``, ``HF_HUB_OFFLINE``, resumable transfers).

A model already in the cache is used as it is: its snapshot is read from disk (``refs/REVISION``
→ ``snapshots/COMMIT``), and only a reference the cache cannot answer — no quantization given and
no Q4_K_M there, or a file not there — asks the Hub. Each GGUF file is checked against the Hub's
sha256 before its first use (an LFS blob is named by it), and deleted if it differs.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from lmgen.errors import CheckpointError, EnvironmentFailure
from lmgen.formats.hub.choose import DEFAULT_QUANT, RepoFile, checkpoint_files, choose_gguf, gguf_models, is_gguf_repo
from lmgen.formats.hub.reference import HubRef

SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Hub:
    """The Hub's settings, read from the environment at each call (as huggingface_hub reads them)."""

    endpoint: str
    cache: Path
    token: str | None
    offline: bool

    @classmethod
    def from_environment(cls) -> Hub:
        env = os.environ
        home = Path(env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
        cache = Path(env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or home / "hub")
        offline = env.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        return cls((env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"), cache,
                   env.get("HF_TOKEN") or None, offline)


@dataclass(frozen=True)
class Pulled:
    """What a reference resolved to: the file or directory to run, and what ``--json`` reports."""

    ref: HubRef
    path: Path
    size: int
    sha256: str | None  # a GGUF file's (its first part's, if split)
    revision: str  # the commit
    fetched: bool  # False: found in the cache, no transfer
    note: str | None = None

    def record(self) -> dict:
        return {"model": str(self.ref), "path": str(self.path), "size": self.size, "sha256": self.sha256,
                "revision": self.revision, "fetched": self.fetched}


def pull(ref: HubRef, hub: Hub | None = None) -> Pulled:
    """The reference's files, from the cache if there, else fetched (see the module)."""
    hub = hub or Hub.from_environment()
    found = _from_cache(ref, hub)
    if found is not None:
        return found
    if hub.offline:
        raise EnvironmentFailure(f"{ref} is not in the Hugging Face cache ({hub.cache}) and HF_HUB_OFFLINE is set: "
                                 f"run `lmgen pull {ref}` where the Hub can be reached")
    with _hub_errors(ref, hub):
        return _fetch(ref, hub)


# ----------------------------------------------------------------------------------- the cache


def snapshot(ref: HubRef, hub: Hub) -> tuple[str, Path] | None:
    """(commit, snapshot directory) of the reference's revision in the cache, or None."""
    root = hub.cache / f"models--{ref.repo.replace('/', '--')}"
    revision = ref.revision or "main"
    try:
        commit = (root / "refs" / revision).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else None
    if not commit or not (root / "snapshots" / commit).is_dir():
        return None
    return commit, root / "snapshots" / commit


def cached_files(folder: Path) -> list[RepoFile]:
    """A snapshot's files, each with its blob's sha256 where the blob is named by one (LFS)."""
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            blob = os.path.basename(os.readlink(path)) if path.is_symlink() else ""
            files.append(RepoFile(path.relative_to(folder).as_posix(), path.stat().st_size,
                                  blob if SHA256.fullmatch(blob) else None))
    return files


def _from_cache(ref: HubRef, hub: Hub) -> Pulled | None:
    found = snapshot(ref, hub)
    if found is None:
        return None
    commit, folder = found
    files = cached_files(folder)
    if not is_gguf_repo(files):
        if ref.quant or ref.file:  # names a GGUF file: the Hub's listing says what there is
            return None
        names = {f.name for f in files}
        complete = "config.json" in names and any(n.endswith(".safetensors") for n in names) and _shards_in(folder)
        return Pulled(ref, folder, sum(f.size for f in files), None, commit, False) if complete else None
    by_default = ref.quant is None and ref.file is None
    if by_default and not hub.offline and not any(m.tag == DEFAULT_QUANT for m in gguf_models(files)):
        return None  # no quantization given and no Q4_K_M here: the Hub's listing decides
    try:
        model, note = choose_gguf(ref.repo, files, ref.quant, ref.file)
    except CheckpointError:
        return None
    return _gguf_result(ref, folder, model, commit, False, note)


def _shards_in(folder: Path) -> bool:
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return True
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all((folder / s).is_file() for s in shards if isinstance(s, str) and "/" not in s)


def _gguf_result(ref, folder: Path, model, commit: str, fetched: bool, note: str | None) -> Pulled:
    paths = [folder / p.name for p in model.parts]
    for part, path in zip(model.parts, paths):
        if part.sha256:
            check_sha256(path, part.sha256, ref)
    if len(paths) > 1:
        from lmgen.formats.gguf.join import joined

        path = joined(paths)
    else:
        path = paths[0]
    return Pulled(ref, path, model.size, model.parts[0].sha256, commit, fetched, note)


# ------------------------------------------------------------------------------ the transfer


def _fetch(ref: HubRef, hub: Hub) -> Pulled:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    from lmgen.formats.hub.ledger import record_pull
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if sys.stderr.isatty() else disable_progress_bars)()  # bytes, rate, time left
    info = HfApi(endpoint=hub.endpoint, token=hub.token).model_info(ref.repo, revision=ref.revision,
                                                                    files_metadata=True)
    files = [RepoFile(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []]
    # by the reference's revision (main if none), so that the cache records where it points
    common = dict(revision=ref.revision, cache_dir=hub.cache, endpoint=hub.endpoint, token=hub.token)
    if is_gguf_repo(files) or (ref.file or "").lower().endswith(".gguf"):
        model, note = choose_gguf(ref.repo, files, ref.quant, ref.file)
        for part in model.parts:
            hf_hub_download(ref.repo, part.name, tqdm_class=_file_bar(), **common)
        record_pull(ref.repo, info.sha, [p.name for p in model.parts])
        _, folder = snapshot(HubRef(ref.repo, revision=info.sha), hub)
        return _gguf_result(ref, folder, model, info.sha, True, note)
    if ref.quant or ref.file:
        raise CheckpointError(f"{ref.repo} has no GGUF files; {'a quantization' if ref.quant else 'a file'} "
                              "picks one in a GGUF repo (name the repo alone to fetch its checkpoint)")
    wanted = checkpoint_files(files)
    if "config.json" not in {f.name for f in wanted} or not any(f.name.endswith(".safetensors") for f in wanted):
        raise CheckpointError(f"{ref.repo} holds neither GGUF files nor a config.json with safetensors weights: "
                              "lmgen cannot run it")
    folder = Path(snapshot_download(ref.repo, allow_patterns=[f.name for f in wanted], **common))
    record_pull(ref.repo, info.sha, [f.name for f in wanted])
    return Pulled(ref, folder, sum(f.size for f in wanted), None, info.sha, True)


def _file_bar():
    """huggingface_hub's progress bar (bytes, rate, time left; on a terminal only), named by the
    file rather than its URL."""
    from huggingface_hub.utils import tqdm

    class FileBar(tqdm):
        def __init__(self, *args, **kwargs):
            if isinstance(kwargs.get("desc"), str):
                kwargs["desc"] = kwargs["desc"].rsplit("/", 1)[-1]
            super().__init__(*args, **kwargs)

    return FileBar


class _hub_errors:
    """huggingface_hub's failures as lmgen's one-line errors: what cannot be found or used
    (unknown repo, revision or file, gated) exit 3; what could not be reached exit 4."""

    def __init__(self, ref: HubRef, hub: Hub):
        self.ref, self.hub = ref, hub

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, (CheckpointError, EnvironmentFailure)):
            return False
        from huggingface_hub import errors

        repo, where = self.ref.repo, self.hub.endpoint
        if isinstance(exc, errors.GatedRepoError):
            raise CheckpointError(f"{repo} is gated: accept its terms on the Hub, then set HF_TOKEN to a token "
                                  "of that account") from None
        if isinstance(exc, errors.RepositoryNotFoundError):
            raise CheckpointError(f"no repo {repo} on the Hub ({where}), or it is private (set HF_TOKEN)") from None
        if isinstance(exc, errors.RevisionNotFoundError):
            raise CheckpointError(f"{repo} has no revision {self.ref.revision}") from None
        if isinstance(exc, errors.RemoteEntryNotFoundError):
            raise CheckpointError(f"{repo} has no file {self.ref.file or ''}".rstrip()) from None
        if isinstance(exc, OSError) and getattr(exc, "errno", None) is not None:
            return False  # a full disk, a read-only cache: the command line's own one line (exit 4)
        if isinstance(exc, Exception) and type(exc).__module__.split(".")[0] in ("httpx2", "huggingface_hub"):
            raise EnvironmentFailure(f"could not fetch {self.ref} from {where}: {exc}".splitlines()[0]) from None
        return False


# ------------------------------------------------------------------------------ the checksum


def check_sha256(path: Path, expected: str, ref: HubRef) -> None:
    """path's bytes against the Hub's sha256, once per file (``sha256_digest``: remembered by its
    stat stamp); a file that differs is deleted (exit 3: the next run fetches it anew)."""
    from lmgen.formats.fingerprint import sha256_digest

    digest = sha256_digest(path)
    if digest != expected:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise CheckpointError(f"{path.name} from {ref.repo} does not match the Hub's sha256 (it has "
                              f"{digest[:16]}…, the Hub lists {expected[:16]}…): deleted; run the command "
                              "again to fetch it anew")
