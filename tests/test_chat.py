"""Chat templates render exactly as transformers' apply_chat_template does."""

import json

import pytest
from conftest import run_lmgen

from lmgen.errors import CheckpointError, InputError
from lmgen.text.chat import render_chat

LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def reference(path, messages):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("system", [None, "You are a pirate."])
def test_smollm2_template_matches_transformers(smollm2_dir, system):
    user = "What is the capital of France?"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    rendered = render_chat(smollm2_dir, user, system)
    assert rendered == reference(smollm2_dir, messages)
    assert rendered.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("where", ["tokenizer_config", "jinja_file"])
def test_other_template_with_bos_and_helpers_matches_transformers(smollm2_dir, tmp_path, where):
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(smollm2_dir / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["bos_token"] = "<|endoftext|>"
    if where == "jinja_file":
        config.pop("chat_template")
        (tmp_path / "chat_template.jinja").write_text(LLAMA3_STYLE)
    else:
        config["chat_template"] = LLAMA3_STYLE
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    messages = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi"}]
    assert render_chat(tmp_path, "Hi", " Be brief. ") == reference(tmp_path, messages)


def test_missing_template_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no chat template"):
        render_chat(tmp_path, "Hi")


def test_chat_answers_sensibly_with_the_default_model(lmgen_exe, smollm2_dir):
    result = run_lmgen(lmgen_exe, "generate", "--chat", "What is the capital of France?", "-n", "40",
                       env={"LMGEN_MODEL": str(smollm2_dir)})
    assert result.returncode == 0, result.stderr.decode()
    answer = result.stdout.decode()
    assert "Paris" in answer
    assert "<|im_end|>" not in answer and "<|im_start|>" not in answer


def test_chat_prompt_tokens_have_no_extra_bos(smollm2_dir):
    from transformers import AutoTokenizer

    import lmgen

    lm = lmgen.load(smollm2_dir)
    text = render_chat(smollm2_dir, "Hi")
    from lmgen.engine.generation import GenerationSettings, prompt_ids_for

    messages = [{"role": "user", "content": "Hi"}]
    ids = prompt_ids_for(lm, messages, GenerationSettings())  # messages, rendered by the library
    expected = AutoTokenizer.from_pretrained(smollm2_dir).apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert ids == list(expected)
    assert prompt_ids_for(lm, text, GenerationSettings()) == ids  # the rendered text: the same tokens


def test_a_bos_is_added_once_whether_or_not_the_text_holds_it(tiny_dir, tmp_path):
    """A tokenizer that adds BOS (Llama 3's does) adds it to plain text, and not again to text that
    begins with it (a rendered chat template): decided from the text, not from a flag."""
    import shutil

    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    import lmgen

    root = tmp_path / "bos"
    shutil.copytree(tiny_dir, root)
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    eos = "<|endoftext|>"
    tok.post_processor = TemplateProcessing(single=f"{eos} $A", special_tokens=[(eos, tok.token_to_id(eos))])
    tok.save(str(root / "tokenizer.json"))
    lm = lmgen.load(root)
    bos = tok.token_to_id(eos)
    assert lm.encode_prompt("hi") == [bos, *lm.encode("hi", add_special_tokens=False)]
    assert lm.encode_prompt(f"{eos}hi") == [bos, *lm.encode("hi", add_special_tokens=False)]


# A chat template is code from a stranger: every way it can fail is one LmgenError, quickly.

def template_dir(root, source=None, config=None):
    root.mkdir(exist_ok=True)
    if source is not None:
        (root / "chat_template.jinja").write_text(source)
    if config is not None:
        (root / "tokenizer_config.json").write_text(json.dumps(config))
    return root


def fails_quickly(root, error, match, seconds=10.0):
    import time

    start = time.monotonic()
    with pytest.raises(error, match=match) as info:
        render_chat(root, "Hi")
    assert time.monotonic() - start < seconds
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("source, match", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran longer than 2 s"),
    ("{% set s = 'x' * 1000 %}{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}",
     "ran longer than"),
    ("{{ 'x' * 10**10 }}", "would make a value of over"),
    ("{{ [1] * 10**10 }}", "would make a value of over"),
    ("{{ 10 ** (10 ** 10) }}", "integer of over 4096 bits"),
    ("{% set ns = namespace(x=3) %}{% for i in range(100) %}{% set ns.x = ns.x * ns.x %}{% endfor %}", "integer of over"),
    ("{% for i in range(100000) %}{{ 'a long line of text to print, many times over' }}{% endfor %}", "output passed"),
    ("{% macro m() %}{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}{% endmacro %}{{ m() }}", "output passed"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "value of over"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", "value of over"),
    ("{% set ns = namespace(l='x') %}{% for i in range(64) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
     "value of over"),
    ("{{ 'x' | center(10**10) }}", "value of over"),
    ("{{ '{:>9999999999}'.format(1) }}", "value of over"),
    ("{{ '%09999999999d' % 1 }}", "value of over"),
    ("{{ '{:{}}'.format('x', 10**10) }}", "width from an argument"),
    ("{{ [[range(1000)|list]] | tojson(indent=10**6) }}", "output passed|longer than"),
    ("{{ 1 / 0 }}", "failed: ZeroDivisionError: division by zero"),
    ("{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}", "failed: RecursionError"),
    ("{% for %}\n{{ x }}", "failed: TemplateSyntaxError"),
    ("{{ ''.__class__.__mro__ }}", "failed: SecurityError"),
    ("{{ messages.nothing.deeper }}", "failed: UndefinedError"),
])
def test_hostile_template_is_a_checkpoint_error(tmp_path, source, match):
    message = fails_quickly(template_dir(tmp_path, source), CheckpointError, match)
    assert message.startswith(f"the chat template in {tmp_path} failed: ")


def test_hostile_template_is_stopped_off_the_main_thread_too(tmp_path):
    import threading

    root = template_dir(tmp_path, "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    errors = []
    thread = threading.Thread(target=lambda: errors.append(fails_quickly(root, CheckpointError, "ran longer")))
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and errors


def test_the_alarm_is_put_back_as_it_was(tmp_path):
    import signal

    before = signal.getsignal(signal.SIGALRM)
    assert render_chat(template_dir(tmp_path / "fast", "{{ messages[0].content }}"), "Hi") == "Hi"
    fails_quickly(template_dir(tmp_path / "slow", "{% for i in range(100000) %}{% for j in range(100000) %}"
                                                  "{% endfor %}{% endfor %}"), CheckpointError, "longer than")
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_exponent_is_left_associative_and_small(tmp_path):
    # jinja2 reads 10 ** 10 ** 10 as (10 ** 10) ** 10: a 333-bit number, not a bomb
    assert render_chat(template_dir(tmp_path, "{{ 10 ** 10 ** 10 }}"), "Hi") == str(10 ** 100)


def test_long_prompt_is_not_mistaken_for_a_runaway_template(tmp_path):
    root = template_dir(tmp_path, "{% for m in messages %}<{{ m.role }}>{{ m.content + '\\n' }}{% endfor %}")
    user = "word " * 400_000  # 2 MB, twice the output a template may make by itself
    assert render_chat(root, user, user) == f"<system>{user}\n<user>{user}\n"


def test_raise_exception_is_the_template_refusing_the_input(tmp_path):
    root = template_dir(tmp_path, "{{ raise_exception('System role not supported\\nby this model') }}")
    message = fails_quickly(root, InputError, "refused: System role not supported by this model")
    assert message.startswith(f"the chat template in {tmp_path}")


@pytest.mark.parametrize("value, match", [
    (42, "chat_template in .*tokenizer_config.json must be a string, not int"),
    ({"default": "{{ 1 }}"}, "must be a string, not dict"),
    ([{"name": "default", "template": 7}], r"must be a list of \{name, template\} entries"),
    (["{{ 1 }}"], r"must be a list of \{name, template\} entries"),
])
def test_chat_template_field_of_the_wrong_type(tmp_path, value, match):
    fails_quickly(template_dir(tmp_path, config={"chat_template": value}), CheckpointError, match)


def test_named_chat_templates_use_default(tmp_path):
    templates = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "{{ messages[0].content }}!"}]
    assert render_chat(template_dir(tmp_path, config={"chat_template": templates}), "Hi") == "Hi!"


@pytest.mark.parametrize("text, match", [
    ("[1, 2]", "must hold an object at the top level, not list"),
    ("[" * 100_000, "nested too deeply"),
    ('{"chat_template": ', "not valid JSON"),
])
def test_broken_tokenizer_config(tmp_path, text, match):
    (tmp_path / "tokenizer_config.json").write_text(text)
    fails_quickly(tmp_path, CheckpointError, match)


def test_template_file_that_is_not_utf8(tmp_path):
    (tmp_path / "chat_template.jinja").write_bytes(b"{{ 'caf\xe9' }}")
    fails_quickly(tmp_path, CheckpointError, "chat template .* is not valid UTF-8")


@pytest.mark.parametrize("name", ["chat_template.jinja", "tokenizer_config.json"])
def test_fifo_in_place_of_a_file_is_refused_without_blocking(tmp_path, name):
    import os

    os.mkfifo(tmp_path / name)  # opening it would wait for a writer forever
    fails_quickly(tmp_path, CheckpointError, "is not a regular file", seconds=5)
