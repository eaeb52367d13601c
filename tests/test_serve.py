"""``lmgen serve`` as a real process on a free port, driven by the official ``openai`` client (and
raw HTTP where the client hides details): the same text as ``lmgen generate``, streamed or not,
under any concurrency; OpenAI's errors; rows freed when a client goes away; a clean SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest

EXE = str(Path(sys.executable).parent / "lmgen")
QUESTION = "What is the capital of France?"
MODEL = "SmolLM2-135M-Instruct"  # the default model's name in /v1/models


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = args[args.index("--api-key") + 1] if "--api-key" in args else None  # /metrics needs it too
        self.proc = subprocess.Popen([EXE, "serve", "--port", str(self.port), *args], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, env={**os.environ, "LMGEN_API_KEY": ""})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError("lmgen serve did not become healthy")

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server():
    served = Served("--max-batch", "8")
    yield served
    served.stop()


def metric(served, name: str) -> float:
    headers = {"Authorization": f"Bearer {served.key}"} if served.key else {}
    with urllib.request.urlopen(urllib.request.Request(served.url + "/metrics", headers=headers)) as response:
        text = response.read().decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def rows_in_flight(served) -> float:
    return metric(served, "lmgen_rows_in_flight")


def generate_json(cli, *args) -> dict:
    result = cli("generate", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_chat_is_what_generate_chat_prints(server, cli):
    reply = server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                                   max_tokens=12, temperature=0)
    local = generate_json(cli, "--chat", "-n", "12", QUESTION)
    assert reply.choices[0].message.content == local["text"]
    assert reply.choices[0].finish_reason == local["finish_reason"]
    assert reply.usage.prompt_tokens == local["prompt_tokens"]
    assert reply.usage.completion_tokens == local["new_tokens"]


def test_a_stream_adds_up_to_the_reply_and_ends_with_usage(server):
    client = server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_completions_n_seed_and_stop(server, cli):
    client = server.client()
    kwargs = dict(model=MODEL, prompt=["The cat sat", "Once upon a time"], max_tokens=8, temperature=0.9, seed=7, n=2)
    first, again = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # a seed reproduces
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    greedy = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0,
                                       stop=[" Paris"])
    local = generate_json(cli, "-n", "8", "--stop", " Paris", "The capital of France is")
    assert greedy.choices[0].text == local["text"] and " Paris" not in greedy.choices[0].text
    assert greedy.choices[0].finish_reason == "stop"


def test_lookup_is_an_extra_field_that_never_changes_the_text(server, cli):
    client = server.client()
    prompt = "Repeat exactly: the quick brown fox jumps over the lazy dog. The quick brown fox"
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    drafted = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0,
                                        extra_body={"lookup": 8})
    assert drafted.choices[0].text == plain.choices[0].text
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, extra_body={"lookup": 99})
    assert raised.value.body["param"] == "lookup"
    remote = cli("generate", "--server", server.url, "--lookup", "8", "-n", "24", prompt)
    assert remote.returncode == 0 and remote.stdout.decode() == plain.choices[0].text + "\n"


def test_sixteen_concurrent_streams_each_equal_their_solo_greedy_output(server):
    client = server.client()
    prompts = [f"Write a sentence about the number {i}." for i in range(16)]
    solo = [client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0).choices[0].text
            for p in prompts]
    together: dict[int, str] = {}

    def stream(i: int) -> None:
        pieces = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=16, temperature=0, stream=True)
        together[i] = "".join(c.choices[0].text for c in pieces if c.choices)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [together.get(i) for i in range(16)] == solo


def test_a_second_chat_turn_reports_cached_tokens_and_the_same_text_as_a_cold_request(server):
    from lmgen.engine.batching import generate
    from lmgen.engine.generation import GenerationSettings, load
    from lmgen.formats.paths import bundled_gguf

    client = server.client()
    messages = [{"role": "system", "content": "You are a geography teacher."}, {"role": "user", "content": QUESTION}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And of Italy?"}]
    hits = metric(server, "lmgen_prefix_cache_hits_total")
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens  # the first turn's, at least
    assert metric(server, "lmgen_prefix_cache_hits_total") == hits + 1
    cold = "".join(e.text for e in generate(load(bundled_gguf()), messages, GenerationSettings(max_new_tokens=24)))
    assert second.choices[0].message.content == cold


@pytest.mark.parametrize("fields, param", [
    ({"temperature": -1}, "temperature"), ({"max_tokens": 0}, "max_tokens"), ({"n": 99}, "n"),
    ({"stop": [""]}, "stop"), ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"), ({"top_p": "high"}, "top_p"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"), ({"functions": [{"name": "f"}]}, "functions"),
    ({"top_k": -1}, "top_k"), ({"repetition_penalty": 0}, "repetition_penalty"),
])
def test_bad_fields_are_400_with_openais_error_object(server, fields, param):
    with pytest.raises(openai.BadRequestError) as raised:
        server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body=fields)
    error = raised.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def tokenized(served, text: str) -> list[int]:
    request = urllib.request.Request(served.url + "/tokenize", json.dumps({"content": text, "add_special": False}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["tokens"]


def test_logit_bias_forces_and_bans_tokens_in_chat_and_completions_as_generate_does(server, cli):
    client = server.client()
    [x] = tokenized(server, "x")
    forced = {str(x): 100}  # as OpenAI's documentation writes it
    text = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0, logit_bias=forced)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=3,
                                          temperature=0, logit_bias=forced)
    assert text.choices[0].text == chat.choices[0].message.content == "xxx"
    prompt = "The capital of France is"
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0).choices[0].text
    banned = {str(token): -100 for token in tokenized(server, plain)}
    other = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, logit_bias=banned)
    assert other.choices[0].text != plain
    options = [arg for token, bias in banned.items() for arg in ("--logit-bias", f"{token}={bias}")]
    assert generate_json(cli, "-n", "8", *options, prompt)["text"] == other.choices[0].text  # locally
    remote = cli("generate", "--server", server.url, "-n", "8", *options, prompt)  # sent along by --server
    assert remote.returncode == 0 and remote.stdout.decode() == other.choices[0].text + "\n"


@pytest.mark.parametrize("bias, message", [
    ({"x": 1}, "keys must be token ids"), ({"1": 101}, "from -100 to 100"), ({"1": -100.5}, "from -100 to 100"),
    ({"1": "a"}, "a number"), ({str(i): 1 for i in range(1025)}, "at most 1024 tokens"), ([1], "must be an object"),
    ({"49152": -100}, "token id 49152 is not in the model's vocabulary (0 to 49151)"),
])
def test_a_bad_logit_bias_is_400_naming_logit_bias(server, bias, message):
    client = server.client()
    calls = [lambda: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=2, logit_bias=bias),
             lambda: client.completions.create(model=MODEL, prompt="hi", max_tokens=2, logit_bias=bias),
             lambda: client.responses.create(model=MODEL, input="hi", max_output_tokens=16,
                                             extra_body={"logit_bias": bias})]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as raised:
            call()
        error = raised.value.body
        assert error["type"] == "invalid_request_error" and error["param"] == "logit_bias"
        assert error["message"].startswith("logit-bias ") and message in error["message"]


def test_a_prompt_longer_than_the_context_is_400_naming_the_sizes(server):
    with pytest.raises(openai.BadRequestError, match="tokens but the context window holds 8192"):
        server.client().completions.create(model=MODEL, prompt="word " * 9000, max_tokens=2)


def test_key_body_limit_and_a_full_server():
    served = Served("--api-key", "s3cret", "--max-batch", "1", "--queue", "0", "--max-body", "2000")
    try:
        with pytest.raises(openai.AuthenticationError):
            served.client("wrong").models.list()
        assert [m.id for m in served.client("s3cret").models.list().data]
        with urllib.request.urlopen(served.url + "/health") as response:  # open without a key
            assert response.status == 200
        with pytest.raises(openai.APIStatusError) as raised:
            served.client("s3cret").completions.create(model=MODEL, prompt="x" * 5000, max_tokens=2)
        assert raised.value.status_code == 413
        client = served.client("s3cret")
        long = client.completions.create(model=MODEL, prompt="Tell a long story.", max_tokens=400, temperature=0,
                                         stream=True)
        next(iter(long))  # it holds the only row
        with pytest.raises(openai.APIStatusError) as raised:
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
        assert raised.value.status_code == 503 and raised.value.response.headers["retry-after"]
        for _, chunk in zip(range(2), long):
            pass
        long.close()  # the client goes away: its row is freed at the next step
        deadline = time.monotonic() + 1
        while rows_in_flight(served) != 0:
            assert time.monotonic() < deadline, "the closed stream's row was not freed within 1 s"
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while True:
            try:
                assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices
                break
            except openai.APIStatusError:
                assert time.monotonic() < deadline, "the closed stream's row was never freed"
                time.sleep(0.1)
    finally:
        assert served.stop() == 0  # SIGTERM: a clean exit


def test_a_non_streamed_request_whose_client_leaves_frees_its_rows_and_a_wedge_is_refused():
    """The README's "streaming or not": a client that hangs up on a non-streamed request frees its
    row; n beyond the rows is a 400 at once, never a request that waits forever."""
    served = Served("--max-batch", "1", "--queue", "4")
    try:
        body = json.dumps({"model": MODEL, "prompt": "Tell a long story.", "max_tokens": 2000, "temperature": 0})
        with socket.create_connection(("127.0.0.1", served.port)) as sock:
            sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            while rows_in_flight(served) != 1:  # it holds the only row
                time.sleep(0.05)
        deadline = time.monotonic() + 5  # closed: freed at the next step
        while rows_in_flight(served) != 0:
            assert time.monotonic() < deadline, "the row of a non-streamed request outlived its client"
            time.sleep(0.05)
        with pytest.raises(openai.BadRequestError, match="--max-batch"):
            served.client().completions.create(model=MODEL, prompt="Hi", max_tokens=2, n=2)
        assert served.client().completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices
    finally:
        assert served.stop() == 0


def test_response_format_json_schema_and_json_object(server):
    import jsonschema

    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
              "required": ["name", "age"], "additionalProperties": False}
    client = server.client()
    for temperature in (0, 0.8):
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Describe a person as JSON."}], max_tokens=60,
            temperature=temperature, seed=3,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                           max_tokens=40, temperature=0, response_format={"type": "json_object"})
    text = reply.choices[0].message.content  # without the constraint: "Hello! ..."
    assert text.lstrip().startswith("{")
    if reply.choices[0].finish_reason == "stop":  # complete: an object; cut by max_tokens: its beginning
        assert isinstance(json.loads(text), dict)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}})
    assert raised.value.body["param"] == "response_format"


def test_logprobs_are_the_probabilities_generate_shows(server, cli):
    """Exactly, from a server without a prefix cache; with one (the default) a prompt found there
    is prefilled in other chunks than a lone run's, so its probabilities differ in the 4th decimal."""
    import math

    cold = Served("--prefix-cache", "0")
    try:
        for served, tolerance in ((cold, 2e-6), (server, 1e-3)):
            client = served.client()
            for _ in range(2):  # the second time its prompt is cached, where there is a cache
                reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                                       max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
            local = generate_json(cli, "--chat", "-n", "6", "--show-probs", "3", QUESTION)
            content = reply.choices[0].logprobs.content
            assert [c.token for c in content] == [t["token"] for t in local["tokens"]]
            for entry, token in zip(content, local["tokens"]):
                assert math.isclose(math.exp(entry.logprob), token["prob"], abs_tol=tolerance)
                assert [t.token for t in entry.top_logprobs] == [t["token"] for t in token["top"]]
                assert entry.bytes == list(entry.token.encode())
            text = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0,
                                             logprobs=2)
            local = generate_json(cli, "-n", "4", "--show-probs", "2", "The capital of France is")
            lp = text.choices[0].logprobs
            assert lp.tokens == [t["token"] for t in local["tokens"]]
            assert all(math.isclose(math.exp(a), t["prob"], abs_tol=tolerance)
                       for a, t in zip(lp.token_logprobs, local["tokens"]))
            assert all(len(top) == 2 for top in lp.top_logprobs)
        assert reply.usage.prompt_tokens_details.cached_tokens > 0
    finally:
        cold.stop()


# ------------------------------------------------------------- the command line as a client (--server)


def test_generate_with_server_prints_what_it_prints_locally(server, cli):
    remote = subprocess.run([EXE, "generate", "--server", server.url, "-n", "12", "The capital of France is"],
                            capture_output=True, timeout=120)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == cli("generate", "-n", "12", "The capital of France is").stdout
    lines = b"The cat sat\n\nOnce upon a time\nHello\n"
    remote = subprocess.run([EXE, "generate", "--server", server.url, "-n", "6", "--each-line", "--json"],
                            input=lines, capture_output=True, timeout=120)
    assert remote.returncode == 0, remote.stderr
    local = [json.loads(line) for line in cli("generate", "-n", "6", "--each-line", "--json", input=lines).stdout.splitlines()]
    keys = ("prompt", "text", "finish_reason", "prompt_tokens", "new_tokens", "sample", "index")
    assert [json.loads(line) for line in remote.stdout.splitlines()] == [{k: r[k] for k in keys} for r in local]


def test_the_client_imports_no_torch_and_refuses_what_a_server_cannot_honour(server, cli):
    probe = ("import sys; from lmgen.cli.main import run; code = run(['generate', '--server', sys.argv[1], '-n', '2', "
             "'Hi']); print(code, 'torch' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe, server.url], capture_output=True, text=True, timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "0 False"
    refused = cli("generate", "--server", server.url, "--show-probs", "2", "Hi")
    assert refused.returncode == 2 and b"--show-probs: not with --server" in refused.stderr
    nobody = cli("generate", "--server", f"http://127.0.0.1:{free_port()}", "Hi")
    assert nobody.returncode == 4 and nobody.stderr.startswith(b"lmgen: error: no server answers at")


def test_piped_chat_with_server_prints_what_it_prints_locally(server, cli):
    lines = b"What is the capital of France?\nAnd of Italy?\n/undo\nAnd of Spain?\n"
    local = cli("chat", "-n", "16", input=lines)
    remote = cli("chat", "--server", server.url, "-n", "16", input=lines)
    assert remote.returncode == local.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout and len(remote.stdout.splitlines()) == 3
    records = [json.loads(line) for line in
               cli("chat", "--server", server.url, "-n", "16", "--jsonl", input=lines).stdout.splitlines()]
    assert [r["text"] for r in records] == local.stdout.decode().splitlines()
    assert records[1]["reused_tokens"] >= records[0]["prompt_tokens"]  # the server's prefix cache
    probe = ("import sys; from lmgen.cli.main import run; code = run(['chat', '--server', sys.argv[1], '-n', '2']); "
             "print(code, 'torch' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe, server.url], input="Hi\n", capture_output=True, text=True,
                            timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "0 False"
    refused = cli("chat", "--server", server.url, "--dtype", "q8", input=b"Hi\n")
    assert refused.returncode == 2 and b"--dtype: not with --server" in refused.stderr


def test_chat_with_server_drops_old_exchanges_the_servers_context_cannot_hold(tiny_chat_dir, cli):
    served = Served("--model", str(tiny_chat_dir))  # a context of 128 tokens
    try:
        lines = b"".join(f"message {i} {'x' * 40}\n".encode() for i in range(4)) + ("y" * 200 + "\n").encode()
        result = cli("chat", "--server", served.url, "-n", "4", input=lines)
        assert result.returncode == 2  # the last message cannot fit even alone: one error line, the others answered
        assert len(result.stdout.splitlines()) == 5
        assert b"oldest exchange(s) to fit the context window" in result.stderr
        assert result.stderr.count(b"lmgen: error: stdin line 5") == 1
    finally:
        assert served.stop() == 0


@pytest.mark.parametrize("option, value, message", [
    ("--max-batch", "0", "max-batch must be >= 1"), ("--max-batch", str(2**64), "max-batch must be at most 65536"), ("--queue", "-1", "queue must be >= 0"),
    ("--max-body", "0", "max-body must be >= 1"), ("--prefix-cache", "-1", "prefix-cache must be >= 0"),
    ("--prefix-cache", str(1 << 21), "prefix-cache must be at most"), ("--port", "0", "port must be from 1 to 65535"),
    ("--kv-dtype", "int4", "unknown KV cache dtype 'int4'"), ("--max-loaded", "-1", "max-loaded must be >= 0"),
    ("--max-memory", "-1", "max-memory must be >= 0"), ("--models-dir", "/nonexistent", "is not a directory"),
        ("--kv-cache-mib", "-1", "kv-cache-mib must be >= 0"), ("--kv-cache-mib", str(1 << 25), "kv-cache-mib must be at most"),
])
def test_bad_serve_options_are_one_line_before_anything_loads(cli, option, value, message):
    result = cli("serve", option, value)
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.decode().splitlines() == [result.stderr.decode().strip()] and message in result.stderr.decode()


def test_a_small_kv_cache_preempts_rows_and_every_reply_is_its_text_alone(server):
    """--kv-cache-mib 8 holds 11 pages of SmolLM2's (176 positions): four concurrent replies of
    48 tokens outgrow it, rows are preempted and resume, and each reply is what it is alone. A
    prompt that could never fit is a 400, and the server goes on."""
    prompts = [f"The history of the city of {city} begins" for city in ("Paris", "Rome", "Berlin", "Madrid")]
    kwargs = dict(model=MODEL, max_tokens=48, temperature=0)
    alone = [server.client().completions.create(prompt=p, **kwargs).choices[0] for p in prompts]
    assert all(c.finish_reason == "length" for c in alone)  # 8 + 48 positions each: 4 pages, 16 in all
    alone = [c.text for c in alone]
    small = Served("--max-batch", "4", "--kv-cache-mib", "8")
    try:
        replies: dict[int, str] = {}
        threads = [threading.Thread(target=lambda i=i: replies.__setitem__(
            i, small.client().completions.create(prompt=prompts[i], **kwargs).choices[0].text)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [replies[i] for i in range(4)] == alone
        assert metric(small, "lmgen_preempted_jobs") > 0 and metric(small, "lmgen_kv_cache_bytes") == 0
        with pytest.raises(openai.BadRequestError, match="kv-cache-mib"):
            small.client().completions.create(prompt="word " * 400, **kwargs)
        assert small.client().completions.create(prompt=prompts[0], **kwargs).choices[0].text == alone[0]
    finally:
        assert small.stop() == 0
