"""Chat templates render exactly as transformers' apply_chat_template does."""

import json

import pytest

from lmgen.chat import render_chat
from lmgen.errors import InputError

from conftest import run_lmgen

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
    import lmgen
    from transformers import AutoTokenizer

    lm = lmgen.load(smollm2_dir)
    text = render_chat(smollm2_dir, "Hi")
    from lmgen.generation import GenerationSettings, prompt_ids_for

    ids = prompt_ids_for(lm, text, GenerationSettings(), chat=True)
    expected = AutoTokenizer.from_pretrained(smollm2_dir).apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert ids == list(expected)
