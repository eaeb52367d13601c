"""``lmgen serve``'s embeddings, model object and tokenizer routes, on a real server process with
the default model: the official ``openai`` client's ``embeddings.create`` (base64, its default, and
float) gets what ``lmgen embed`` prints; token-id inputs; OpenAI's 400s; ``/v1/models/{id}``;
llama-server's ``/tokenize`` and ``/detokenize``."""

import json
import urllib.error
import urllib.request

import openai
import pytest
from test_serve import MODEL, Served

TEXTS = ["The cat sat on the mat.", "Hi", "Embeddings put texts that mean the same thing close together."]


@pytest.fixture(scope="module")
def server():
    served = Served()
    yield served
    served.stop()


def post(served, path: str, body) -> tuple[int, dict]:
    request = urllib.request.Request(served.url + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def embedded(cli, *texts: str) -> list[dict]:
    result = cli("embed", *texts)
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def test_the_client_gets_what_lmgen_embed_prints_in_base64_and_float(server, cli):
    client = server.client()
    as_base64 = client.embeddings.create(model=MODEL, input=TEXTS)  # the client asks for base64 and decodes it
    as_float = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    local = embedded(cli, *TEXTS)
    assert [d.index for d in as_base64.data] == [0, 1, 2] and as_base64.model == MODEL
    assert [d.embedding for d in as_base64.data] == [d.embedding for d in as_float.data]  # float32 both ways
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == sum(r["tokens"] for r in local)
    for served, printed in zip(as_float.data, local):
        assert len(served.embedding) == 576
        assert served.embedding == pytest.approx(printed["embedding"], abs=1e-5)
        assert sum(x * x for x in served.embedding) == pytest.approx(1, abs=1e-5)


def test_a_vector_is_the_same_alone_and_in_a_batch(server):
    client = server.client()
    batched = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    for text, vector in zip(TEXTS, batched.data):
        assert client.embeddings.create(model=MODEL, input=text, encoding_format="float").data[0].embedding == \
            vector.embedding


def test_token_id_inputs_are_the_text_they_stand_for(server):
    status, tokenized = post(server, "/tokenize", {"content": TEXTS[0]})
    assert status == 200
    ids = tokenized["tokens"]
    client = server.client()
    text = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float").data[0].embedding
    one = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    several = client.embeddings.create(model=MODEL, input=[ids, ids[:1]], encoding_format="float")
    assert one.data[0].embedding == several.data[0].embedding == text
    assert several.usage.prompt_tokens == len(ids) + 1
    assert client.embeddings.create(model=MODEL, input="x", dimensions=576).data[0].embedding


@pytest.mark.parametrize("fields, param, message", [
    ({"input": []}, "input", "'input' must be"), ({"input": ["a", [1]]}, "input", "'input' must be"),
    ({"input": ""}, "input", "the input is empty"), ({"input": ["a", ""]}, "input", "input 1 is empty"),
    ({"input": [[5, 49152]]}, "input", "token id 49152 is not in the model's vocabulary"),
    ({"input": [1] * 8193}, "input", "8193 tokens but the context window holds 8192"),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format", "float or base64"),
    ({"input": "a", "dimensions": 64}, "dimensions", "this model's size, 576"),
    ({"input": "a", "pooling": "max"}, "pooling", "mean, last, cls"),
    ({"input": "a", "model": "nope"}, "model", "does not exist"),
])
def test_bad_fields_are_400_with_openais_error_object(server, fields, param, message):
    status, body = post(server, "/v1/embeddings", fields)
    assert status == (404 if param == "model" else 400)
    error = body["error"]
    assert error["param"] == param and message in error["message"] and error["type"] == "invalid_request_error"


def test_the_model_object_and_an_unknown_id(server):
    client = server.client()
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model" and model.owned_by == "lmgen"
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("no-such-model")
    assert raised.value.body["code"] == "model_not_found"
    assert post(server, "/v1/models/" + MODEL, {})[0] == 405  # GET only
    with urllib.request.urlopen(server.url + "/metrics") as response:  # counted under the route, not "other"
        assert 'route="/v1/models/{id}",status="404"' in response.read().decode()


def test_tokenize_and_detokenize_round_trip(server):
    text = "Héllo, wörld! 🙂"
    status, plain = post(server, "/tokenize", {"content": text, "add_special": False})
    assert status == 200 and plain["tokens"]
    assert post(server, "/detokenize", {"tokens": plain["tokens"]}) == (200, {"content": text})
    status, special = post(server, "/tokenize", {"model": MODEL, "content": text})
    assert status == 200 and special["tokens"][-len(plain["tokens"]):] == plain["tokens"]
    for path, body, param in (("/tokenize", {"content": 5}, "content"),
                              ("/tokenize", {"content": "a", "add_special": "yes"}, "add_special"),
                              ("/detokenize", {"tokens": [1, 49152]}, "tokens"),
                              ("/detokenize", {"tokens": "1 2"}, "tokens")):
        status, error = post(server, path, body)
        assert status == 400 and error["error"]["param"] == param
