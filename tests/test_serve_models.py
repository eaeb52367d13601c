"""Several models behind one server (lmgen.serve.models): /v1/models lists them, each request's
model picks one (loaded on its first request, the least recently used idle one unloaded beyond
--max-loaded), an unknown name is a 404 with OpenAI's error object, and each model's replies are
what generate gives with that model alone."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import openai
import pytest
from conftest import save_tiny
from hypothesis import given, settings
from hypothesis import strategies as st
from test_serve import EXE, free_port


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for name, seed in (("alpha", 0), ("beta", 1)):
        save_tiny("llama", root / name, seed=seed)
    return root


def greedy(cli, model, prompt: str) -> str:
    result = cli("generate", "-m", str(model), "-n", "6", "-t", "0", "--json", prompt)
    return json.loads(result.stdout)["text"]


def test_each_request_picks_its_model_and_the_least_recently_used_is_unloaded(two_models, cli):
    port = free_port()
    proc = subprocess.Popen([EXE, "serve", "--port", str(port), "--models-dir", str(two_models), "--max-loaded", "1"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env={**os.environ, "LMGEN_API_KEY": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        while True:  # healthy once the first model is loaded
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["alpha", "beta"]
        expected = {name: greedy(cli, two_models / name, "The cat") for name in ("alpha", "beta")}
        assert expected["alpha"] != expected["beta"]  # two different models: a mix-up would show
        for name in ("beta", "alpha", "beta", "alpha"):  # each switch unloads the other (--max-loaded 1)
            reply = client.completions.create(model=name, prompt="The cat", max_tokens=6, temperature=0)
            assert reply.choices[0].text == expected[name] and reply.model == name
        with pytest.raises(openai.NotFoundError) as unknown:
            client.completions.create(model="gamma", prompt="The cat", max_tokens=2)
        error = unknown.value.body
        assert error["code"] == "model_not_found" and error["param"] == "model" and "alpha, beta" in error["message"]
        request = urllib.request.Request(url + "/v1/completions", data=b'{"prompt": "The cat", "max_tokens": 6, "temperature": 0}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:  # no model named: the first
            assert json.loads(response.read())["choices"][0]["text"] == expected["alpha"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    log = err.decode()
    assert log.count("lmgen: unloaded") >= 3 and "lmgen: serving beta" in log, log


def test_two_models_with_one_name_are_refused_before_listening(two_models, cli, tmp_path):
    other = tmp_path / "alpha"
    save_tiny("llama", other)
    result = cli("serve", "--models-dir", str(two_models), "--model", str(other), "--port", "1")
    assert result.returncode == 2 and b"two models are named 'alpha'" in result.stderr


class FakeEngine:
    def __init__(self, busy: bool):
        import threading

        self.in_house, self.stopped = int(busy), threading.Event()

    def stop(self) -> None:  # (on the unloading thread)
        self.stopped.set()


@given(st.lists(st.tuples(st.integers(1, 100), st.booleans()), min_size=1, max_size=6), st.integers(1, 100),
       st.integers(1, 6), st.integers(0, 300))
@settings(max_examples=200, deadline=None)
def test_room_is_made_least_recently_used_idle_first_and_never_from_a_busy_model(tmp_path_factory, loaded, size,
                                                                                   max_loaded, budget):
    """Invariant: after _make_room(spec), spec fits both bounds (or Refused is raised when only busy
    models stand in the way); the models unloaded are idle ones, least recently used first."""
    from lmgen.serve.bridge import Refused
    from lmgen.serve.models import Models, ModelSpec, Served

    root = tmp_path_factory.mktemp("sizes")

    def spec(name: str, nbytes: int) -> ModelSpec:
        (root / f"{name}.gguf").write_bytes(b"x" * nbytes)
        return ModelSpec(name, str(root / f"{name}.gguf"))

    specs = [spec(f"m{i}", n) for i, (n, _) in enumerate(loaded)] + [spec("new", size)]
    models = Models(specs, None, None, None, max_loaded, budget)
    for i, (_, busy) in enumerate(loaded):
        models.loaded[f"m{i}"] = Served(specs[i], engine=FakeEngine(busy), used=i)
    before = dict(models.loaded)
    try:
        models._make_room(specs[-1])
    except Refused:
        assert any(s.engine.in_house for s in models.loaded.values())
        return
    gone = [name for name in before if name not in models.loaded]
    assert all(not before[name].engine.in_house and before[name].engine.stopped.wait(30) for name in gone)
    kept_idle = [s.used for s in models.loaded.values() if not s.engine.in_house]
    assert all(before[name].used < min(kept_idle, default=10**9) for name in gone)  # least recently used first
    weights = size + sum(s.spec.weight_bytes for s in models.loaded.values())
    assert len(models.loaded) < max_loaded and (not budget or not models.loaded or weights <= budget)
