"""Records for many prompts, from the library: exactly what ``lmgen generate --json`` prints.

``complete`` runs prompts through the batched engine (``batching.generate_many``) and yields one
record per sample (``records.summary``: the one place a record is built) in input order. A
prompt is text, messages, or an input record ``{"id": …, "prompt": …}`` with optional ``system``
(the prompt is then rendered with the chat template), ``max_new_tokens`` and ``seed`` of its
own; its ``id`` is copied into the output record. ``lmgen batch`` and its Ray actors call it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from lmgen.engine.batching import PromptError, Request, generate_many, in_input_order
from lmgen.engine.generation import Finished, GenerationSettings, LanguageModel, is_token_ids
from lmgen.engine.records import reasoning_apart, summary
from lmgen.errors import InputError
from lmgen.text.chat import check_messages
from lmgen.text.reasoning import opens_thinking
from lmgen.text.utf8 import utf8_text

FIELDS = {"id": (str, int), "prompt": (str, list), "system": (str,), "max_new_tokens": (int,), "seed": (int,),
          "index": (int,)}
KEPT = ("id", "index")  # copied into the output record


def check_record(record: dict) -> None:
    """An input record's fields have the types FIELDS names (a bool is not an int, a float never
    an id) and its prompt is text, messages or token ids, not empty."""
    for key, value in record.items():
        kinds = FIELDS.get(key)
        if kinds is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            shown = json.dumps(value, ensure_ascii=False)[:200]
            raise InputError(f"field {key!r} must be {' or '.join(k.__name__ for k in kinds)}, got {shown}")
    if "prompt" not in record:
        raise InputError(f"the record has no \"prompt\": {json.dumps(record, ensure_ascii=False)[:200]}")
    prompt = record["prompt"]
    if not prompt:
        raise InputError("the prompt is empty")
    for key in ("prompt", "system", "id"):  # text that reaches the tokenizer or the output record
        if isinstance(record.get(key), str):
            utf8_text(record[key], f"field {key!r}")
    if isinstance(prompt, list) and not is_token_ids(prompt):
        check_messages(prompt)
    if record.get("max_new_tokens", 1) < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {record['max_new_tokens']}")
    if not 0 <= record.get("seed", 0) < 2**64:
        raise InputError(f"seed must be from 0 to 2**64 - 1, got {record['seed']}")


def request_of(item, chat: bool = False, system: str | None = None) -> tuple[dict, Request]:
    """(its id and index where it has them, the Request) of a prompt or an input record. With
    ``chat`` (or a record's own ``system``) a text prompt becomes messages for the chat template."""
    record = item if isinstance(item, dict) else {"prompt": item}
    check_record(record)
    prompt, system = record["prompt"], record.get("system", system)
    if isinstance(prompt, str) and (chat or "system" in record):
        prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    kept = {key: record[key] for key in KEPT if key in record}
    return kept, Request(prompt, record.get("max_new_tokens"), record.get("seed"))


def complete(lm: LanguageModel, prompts: Iterable, settings: GenerationSettings = GenerationSettings(),
             batch_size: int = 8, chat: bool = False, system: str | None = None,
             kv_cache_mib: float | None = None) -> Iterator[dict]:
    """The records of every prompt (one per sample), in input order, each as soon as it and every
    earlier prompt are done. ``kv_cache_mib``: the rows' shared KV cache (None: what memory allows)."""
    kept: dict[int, dict] = {}
    texts: dict[int, tuple] = {}  # (the prompt as given, the text the chat template made of it, or None)

    def requests():
        for index, item in enumerate(prompts):
            kept[index] = {"id": item["id"]} if isinstance(item, dict) and "id" in item else {}
            kept[index], request = request_of(item, chat, system)
            given = item["prompt"] if isinstance(item, dict) else item
            templated = not isinstance(request.prompt, str) and not is_token_ids(request.prompt)
            texts[index] = given, lm.prompt_text(request.prompt) if templated else None
            yield request

    try:
        yield from _records(generate_many(lm, requests(), settings, batch_size, kv_cache_mib=kv_cache_mib),
                            settings, kept, texts,
                            lm.model.weight_bytes_per_token())
    except PromptError as exc:  # every earlier record has been yielded: name the one that cannot be used
        where = kept.get(exc.index, {}).get("id", exc.index + 1)
        raise InputError(f"prompt {json.dumps(where, ensure_ascii=False)}: {exc}") from None


def _records(events, settings: GenerationSettings, kept: dict, texts: dict, bytes_per_token: int) -> Iterator[dict]:
    """The records of the events, each prompt's as soon as it and every earlier one are done."""
    finished_only = in_input_order(events, settings.num_samples, keep=lambda event: isinstance(event, Finished))
    for index, samples in finished_only:
        (given, rendered), ids = texts.pop(index), kept.pop(index)
        for done in sorted(samples, key=lambda e: e.sample):
            yield record_of(given, done, bytes_per_token, ids, rendered)


def record_of(prompt, done: Finished, bytes_per_token: int, kept: dict, rendered: str | None = None) -> dict:
    """The sample's record, with the input's id first and its index (position in the input). Its
    ``prompt`` is the prompt as given; ``rendered_prompt`` what the chat template made of it (a
    thinking model's reply then has its reasoning apart, as ``generate --chat --json`` prints it)."""
    record = summary(prompt, done, bytes_per_token)
    if rendered is not None:
        record["rendered_prompt"] = rendered
        record = reasoning_apart(record, opens_thinking(rendered))
    if "index" in kept:
        record["index"] = kept["index"]
    return {"id": kept["id"], **record} if "id" in kept else record
