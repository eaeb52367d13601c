"""A local stand-in for the Hugging Face Hub (model repos), for tests that point ``HF_ENDPOINT`` at it.

It answers what huggingface_hub 2.4.0 calls for ``hf_hub_download``, ``snapshot_download``, ``HfApi().model_info``/
``repo_info`` and ``list_repo_files``/``list_repo_tree``: ``GET /api/models/{repo}[/revision/{rev}]`` (model info;
``?blobs=true`` adds ``size``, ``blobId``, ``lfs`` to each sibling), ``GET /api/models/{repo}/tree/{rev}[/{path}]``
(``recursive``; paged by a ``Link`` header when ``page_size`` is set) and ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``
(``X-Repo-Commit``, ``ETag``, ``Content-Length``, and ``X-Linked-Etag``/``X-Linked-Size`` for LFS files; a ``Range``
gets a 206). LFS files (an LFS suffix, or ``LFS_MIN_SIZE`` bytes and more) have their sha256 as etag, the others git's
blob sha1. No ``X-Xet-*`` header or ``xetHash`` is ever sent, so downloads are plain HTTP even with hf_xet installed.
Revisions: ``main`` and the repo's commit sha. Errors carry the Hub's ``X-Error-Code``/``X-Error-Message``:
``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound`` (404), ``GatedRepo`` (401 without a token, 403 with one not
in ``hub.tokens``); as on the Hub, a gated repo's model info and tree are public, only ``/resolve`` is gated.

huggingface_hub copies ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE``, the token path... into
``huggingface_hub.constants`` at import, so setting the environment in a test is not enough:
``configure_hf(monkeypatch, hub.url, tmp_path)`` sets it *and* monkeypatches each constant to what a fresh import
would give (call it again with ``offline=True`` to go offline). It also drops ``HF_TOKEN`` and turns telemetry off
(which would fetch an agent registry and cache it in ``HF_HOME``): nothing in ``~/.cache`` is read or written.

A cut body (``cut_after``) is resumed by the *same* ``hf_hub_download`` call (1 s later, with ``Range``), from the
last whole ``constants.DOWNLOAD_CHUNK_SIZE`` (10 MiB) chunk received: patch that constant to see a ``Range`` on small
files. A failed call deletes its partial file, so a later call starts again from byte 0. Usage::

    with FakeHub() as hub:
        hub.add_repo("org/model", {"config.json": b"{}", "model.gguf": Path("x.gguf")})
        configure_hf(monkeypatch, hub.url, tmp_path / "hf")
        path = hf_hub_download("org/model", "model.gguf")
        assert len(hub.calls("GET", "/resolve/")) == 1
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack")
LFS_MIN_SIZE = 10 * 1024 * 1024
CHUNK = 64 * 1024
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n"
DATE = "2024-01-01T00:00:00.000Z"
_ENV_CLEARED = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_XET_CACHE",
                "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING")


# path: percent-decoded, without the query; range, authorization: those headers, or None
Request = namedtuple("Request", "method path query range authorization")
_Repo = namedtuple("_Repo", "repo_id files sha gated")  # files: {name: _File}
# etag: the sha256 for an LFS file, else git's blob id; blob_id: git's, of the content or of the LFS pointer git
# stores instead; lfs: {"oid", "size", "pointerSize"} for an LFS file, else {}
_File = namedtuple("_File", "name source size sha256 etag blob_id lfs")


def _make_file(name: str, source: bytes | Path) -> _File:
    size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    for chunk in _chunks(source, 0, size):
        sha256.update(chunk)
        sha1.update(chunk)
    sha256, sha1 = sha256.hexdigest(), sha1.hexdigest()
    if not (name.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE):
        return _File(name, source, size, sha256, sha1, sha1, {})
    pointer = LFS_POINTER % (sha256.encode(), size)
    blob_id = hashlib.sha1(b"blob %d\0%s" % (len(pointer), pointer)).hexdigest()
    lfs = {"oid": sha256, "size": size, "pointerSize": len(pointer)}
    return _File(name, source, size, sha256, sha256, blob_id, lfs)


def _chunks(source: bytes | Path, start: int, end: int):
    """Yield source[start:end] in chunks."""
    if isinstance(source, bytes):
        yield from (source[pos:min(pos + CHUNK, end)] for pos in range(start, end, CHUNK))
        return
    with open(source, "rb") as f:
        f.seek(start)
        while start < end and (chunk := f.read(min(CHUNK, end - start))):
            start += len(chunk)
            yield chunk


class FakeHub:
    """The server; ``url`` is set by ``start()`` (or ``with FakeHub() as hub``)."""

    def __init__(self, tokens: set[str] | None = None, page_size: int | None = None):
        self.repos: dict[str, _Repo] = {}
        self.tokens = set(tokens or {"hf_fake_token"})  # bearer tokens that may read gated repos
        self.page_size = page_size  # tree entries per page; None: one page
        self.requests: list[Request] = []
        self.url = ""
        self._lock = threading.Lock()
        self._cuts: dict[str, list[int]] = {}  # name -> [nbytes, times left]
        self._server: ThreadingHTTPServer | None = None

    def add_repo(self, repo_id: str, files: dict[str, bytes | Path], gated: bool = False,
                 revision_sha: str | None = None) -> str:
        """Add (or replace) a model repo; returns its commit sha. A Path is hashed now and read when served."""
        entries = {name: _make_file(name, src) for name, src in files.items()}
        sha = revision_sha or hashlib.sha1(json.dumps([repo_id, sorted((n, f.etag) for n, f in entries.items())])
                                           .encode()).hexdigest()
        self.repos[repo_id] = _Repo(repo_id, entries, sha, gated)
        return sha

    def cut_after(self, name: str, nbytes: int, times: int = 1) -> None:
        """The next ``times`` GETs of ``name`` ("file" or "repo/file") send ``nbytes`` of body, then hang up."""
        with self._lock:
            self._cuts[name] = [nbytes, times]

    def _take_cut(self, repo_id: str, filename: str) -> int | None:
        with self._lock:
            for key in (f"{repo_id}/{filename}", filename):
                if key in self._cuts and self._cuts[key][1] > 0:
                    self._cuts[key][1] -= 1
                    return self._cuts[key][0]
        return None

    def calls(self, method: str | None = None, path_contains: str = "") -> list[Request]:
        """The requests received so far, filtered."""
        with self._lock:
            return [r for r in self.requests if method in (None, r.method) and path_contains in r.path]

    def start(self) -> FakeHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # a client hanging up mid-body is expected
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.0"  # one request per connection: no stale keep-alive between tests

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        with self.hub._lock:
            self.hub.requests.append(Request(self.command, unquote(split.path), split.query,
                                             self.headers.get("Range"), self.headers.get("Authorization")))
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        if parts[:2] == ["api", "models"]:
            return self._api(parts[2:], query, split.path)
        repo, rest = self._split_repo(parts)
        if len(rest) >= 3 and rest[0] == "resolve":
            return self._resolve(repo, rest[1], "/".join(rest[2:]), body=self.command == "GET")
        self._error(404, None, "Not Found")

    do_HEAD = do_GET

    def _split_repo(self, parts: list[str]) -> tuple[_Repo | str, list[str]]:
        """A known repo ("org/name", or legacy "name") and the rest of the path; else the repo id as a str."""
        for n in (2, 1):
            if "/".join(parts[:n]) in self.hub.repos:
                return self.hub.repos["/".join(parts[:n])], parts[n:]
        return "/".join(parts[:2]), parts[2:]

    def _api(self, parts: list[str], query: dict, raw_path: str) -> None:
        repo, rest = self._split_repo(parts)
        if isinstance(repo, str):
            return self._error(404, "RepoNotFound", "Repository not found")
        blobs = query.get("blobs", "").lower() in ("true", "1")
        if not rest or (rest[0] == "revision" and len(rest) == 2):
            if not rest or self._revision_ok(repo, rest[1]):
                self._json(self._info(repo, blobs))
        elif rest[0] == "tree" and len(rest) >= 2:
            if self._revision_ok(repo, rest[1]):
                self._tree(repo, "/".join(rest[2:]), query, raw_path)
        else:
            self._error(404, None, "Not Found")

    def _revision_ok(self, repo: _Repo, revision: str) -> bool:
        if revision in ("main", repo.sha):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return False

    def _info(self, repo: _Repo, blobs: bool) -> dict:
        def sibling(f: _File) -> dict:
            lfs = {"lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": f.lfs["pointerSize"]}} if f.lfs else {}
            extra = {"size": f.size, "blobId": f.blob_id, **lfs} if blobs else {}
            return {"rfilename": f.name, **extra}

        namespace = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        return {"_id": repo.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id, "author": namespace,
                "sha": repo.sha, "lastModified": DATE, "createdAt": DATE, "private": False,
                "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": [], "siblings": [sibling(f) for f in sorted(repo.files.values(), key=lambda f: f.name)],
                "usedStorage": sum(f.size for f in repo.files.values())}

    def _tree(self, repo: _Repo, path: str, query: dict, raw_path: str) -> None:
        prefix = f"{path}/" if path else ""
        names = [n for n in repo.files if n.startswith(prefix)]
        if path and not names:
            return self._error(404, "EntryNotFound", f"{path} does not exist on \"main\"")
        recursive = query.get("recursive", "").lower() in ("true", "1")
        rels = [n[len(prefix):] for n in names]
        folders = {prefix + "/".join(r.split("/")[:i]) for r in rels for i in range(1, r.count("/") + 1)}
        if not recursive:
            rels = [r for r in rels if "/" not in r]
            folders = {d for d in folders if "/" not in d[len(prefix):]}
        entries = [{"type": "directory", "oid": hashlib.sha1(f"{repo.sha}:{d}".encode()).hexdigest(), "path": d}
                   for d in sorted(folders)] + [
            {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.name, **({"lfs": f.lfs} if f.lfs else {})}
            for f in (repo.files[prefix + r] for r in sorted(rels))]
        start = int(query.get("cursor", 0))
        end = len(entries) if self.hub.page_size is None else start + self.hub.page_size
        headers = {}
        if end < len(entries):
            headers["Link"] = f'<{self.hub.url}{raw_path}?{urlencode({**query, "cursor": end})}>; rel="next"'
        self._json(entries[start:end], headers)

    def _resolve(self, repo: _Repo | str, revision: str, filename: str, body: bool) -> None:
        if isinstance(repo, str):
            return self._error(404, "RepoNotFound", "Repository not found")
        if not self._authorized(repo) or not self._revision_ok(repo, revision):
            return
        file = repo.files.get(filename)
        if file is None:
            return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.sha})
        start, end = self._range(file.size)
        if start is None:
            return
        partial = bool(self.headers.get("Range"))
        self._head(206 if partial else 200, {
            "X-Repo-Commit": repo.sha, "ETag": f'"{file.etag}"', "Content-Length": str(end - start),
            "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
            # LFS: the real Hub answers a 302 to its CDN here, with these two headers
            "X-Linked-Etag": f'"{file.sha256}"' if file.lfs else None,
            "X-Linked-Size": str(file.size) if file.lfs else None,
            "Content-Range": f"bytes {start}-{end - 1}/{file.size}" if partial else None})
        if body:
            self._send_body(file, start, end, self.hub._take_cut(repo.repo_id, filename))

    def _send_body(self, file: _File, start: int, end: int, cut: int | None) -> None:
        limit = end if cut is None else min(end, start + cut)
        for chunk in _chunks(file.source, start, limit):
            self.wfile.write(chunk)
        self.wfile.flush()
        self.close_connection = True

    def _range(self, size: int) -> tuple[int | None, int]:
        """(start, end) of the body to send; (None, 0) once a 416 has been answered."""
        header = self.headers.get("Range")
        if not header:
            return 0, size
        first, _, last = header.removeprefix("bytes=").partition("-")
        try:
            if not first:  # suffix range: the last N bytes
                start, end = max(size - int(last), 0), size
            else:
                start, end = int(first), min(int(last) + 1, size) if last else size
        except ValueError:
            start, end = size, size
        if start >= size or start >= end:
            self._error(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
            return None, 0
        return start, end

    def _authorized(self, repo: _Repo) -> bool:
        if not repo.gated:
            return True
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[len("Bearer "):] in self.hub.tokens:
            return True
        why = (" and you are not in the authorized list." if auth else
               ". You must have access to it and be authenticated to access it. Please log in.")
        self._error(403 if auth else 401, "GatedRepo", f"Access to model {repo.repo_id} is restricted{why}")
        return False

    def _head(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if value is not None:
                self.send_header(key, value)
        self.end_headers()

    def _json(self, data, headers: dict | None = None, status: int = 200) -> None:
        payload = json.dumps(data).encode()
        self._head(status, {"Content-Type": "application/json", "Content-Length": str(len(payload)), **(headers or {})})
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _error(self, status: int, code: str | None, message: str, headers: dict | None = None) -> None:
        self._json({"error": message}, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})}, status)


def configure_hf(monkeypatch, endpoint: str, hf_home: str | Path, *, offline: bool = False,
                 token: str | None = None) -> None:
    """Point huggingface_hub at ``endpoint`` with its cache under ``hf_home``, for this test only."""
    for name in _ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in {"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1" if offline else "0",
                        "HF_HUB_DISABLE_TELEMETRY": "1", **({"HF_TOKEN": token} if token else {})}.items():
        monkeypatch.setenv(name, value)
    from huggingface_hub import constants
    from huggingface_hub.utils import _cache_manager

    spec = importlib.util.spec_from_file_location("_fake_hub_fresh_constants", constants.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)  # what `import huggingface_hub.constants` would give with this environment
    for name, value in vars(fresh).items():
        if name.isupper() and getattr(constants, name, None) != value:
            monkeypatch.setattr(constants, name, value, raising=False)
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", fresh.HF_HUB_CACHE)
