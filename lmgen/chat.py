"""Chat templates: render messages into a prompt the way transformers does.

The template comes from the checkpoint directory: ``chat_template.jinja``, or
``chat_template`` in ``tokenizer_config.json`` (a GGUF import writes it there
from ``tokenizer.chat_template``). It is rendered with jinja2 in a sandbox with
the same settings and helpers as transformers' ``apply_chat_template``.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from lmgen.errors import CheckpointError, InputError


def find_template(root: Path) -> tuple[str, dict]:
    """(template source, tokenizer_config) for a checkpoint directory."""
    config_path = root / "tokenizer_config.json"
    config = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {config_path}: {exc}") from None
    jinja_file = root / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), config
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: use "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not template:
        raise InputError(f"{root} has no chat template (chat_template.jinja or tokenizer_config.json); drop --chat")
    return template, config


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # serialized AddedToken
        return value.get("content")
    return value


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def render_chat(root: Path, user: str, system: str | None = None) -> str:
    """The prompt text for one user turn (and an optional system message), ready to generate."""
    from jinja2.exceptions import TemplateError

    source, config = find_template(root)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    special = {k: _token_text(v) for k, v in config.items() if k.endswith("_token") and not k.startswith("add_")}
    try:
        return _compile(source).render(messages=messages, add_generation_prompt=True, **special)
    except TemplateError as exc:
        raise InputError(f"the chat template failed: {exc}") from None
